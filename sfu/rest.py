"""REST API for meetings and their history (mounted by :func:`sfu.api.make_app`).

Every request carries an access token (``Authorization: Bearer``, or a
``token`` query parameter).  Errors are JSON: ``{"error": "<one line>"}``.

| request | who | answer |
|---|---|---|
| ``POST /api/meetings`` ``{"topic", "room"?}`` | host grant (room: that room's), admin | 201 the meeting; 200 when it claims the room's running meeting that has no creator yet; 429 past the per-identity limits |
| ``GET /api/meetings`` | any | meetings the caller created; every meeting for an admin |
| ``GET /api/meetings/{id}`` | creator, admin | the meeting, its sessions, per-identity totals |
| ``GET /api/meetings/{id}/export?format=csv\\|json`` | creator, admin | attendance file |
| ``GET /api/meetings/{id}/chat`` | creator, admin | the chat kept with ``--keep-chat`` (sfu/chat.py) |
| ``GET /api/meetings/{id}/polls``, ``.../polls/export?format=csv\\|json`` | creator, admin | its polls and results (sfu/polls.py) |
| ``GET /api/meetings/{id}/recordings`` | creator, admin | its recordings by the SFU, each with its files (sfu/recording.py) |
| ``GET /api/meetings/{id}/recordings/{rid}/{file}`` | creator, admin | one recorded track (WebM or MP4) |
| ``DELETE /api/meetings/{id}`` | host grant for its room (or the creator with a host grant), admin | ends it now, disconnects everyone |
| ``DELETE /api/people/{identity}`` | admin | anonymises that person's sessions and meetings (and their audit rows as actor) |
| ``GET /api/me/meetings`` | any | own history: the meetings the caller attended, each with only their own join/leave times and duration; the creator's entries link the attendance view and export |
| ``GET /api/me/meetings/{id}`` | any who attended it | one such entry; 403 for a meeting the caller did not attend |
| ``GET /api/audit?actor=&action=&kind=&object_id=&since=&limit=`` | admin | the audit log: who read, exported or deleted which history, when |

Every read, export and deletion of history above is written to the audit log
(sfu/audit.py) before the answer is sent.
| ``POST /api/dev/token`` ``{"room", "name"}`` | anyone, only with ``sfu serve --dev`` | a token for a new random identity |
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Callable

from aiohttp import web

from .auth import AuthError, Claims, Grants, authorize, mint_token, token_from_request, verify_token
from . import audit
from .history import attendance, export, meeting_dict, new_pseudonym
from .own_history import attended, own_meeting_dict
from .chat import stored_messages
from .log import event
from .meetings import Conflict, CreateLimiter, MeetingService, NotFound, TooMany, can_read_history
from .polls import export_polls, stored_polls
from .recording import stored_file, stored_recordings

logger = logging.getLogger("sfu.rest")

MEETINGS_KEY = web.AppKey("meetings", MeetingService)
AUTH_SECRET_KEY = web.AppKey("auth_secret", str)
DEV_MODE_KEY = web.AppKey("dev_mode", bool)
CREATE_LIMITER_KEY = web.AppKey("create_limiter", CreateLimiter)

ROOM_RE = re.compile(r"^[A-Za-z0-9_.~-]{1,64}$")
MAX_TOPIC = 200
MAX_NAME = 100


def json_error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def claims_of(request: web.Request) -> Claims:
    """The caller's verified claims; AuthError(401) without a valid token."""
    return verify_token(request.app[AUTH_SECRET_KEY], token_from_request(request))


def _handler(fn: Callable) -> Callable:
    """Turn the errors of the meeting layer into JSON answers."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except AuthError as exc:
            return json_error(exc.status, exc.reason)
        except NotFound:
            return json_error(404, "no such meeting")
        except Conflict as exc:
            return json_error(409, str(exc))
        except _BadRequest as exc:
            return json_error(400, str(exc))
        except TooMany as exc:
            response = json_error(429, str(exc))
            response.headers["Retry-After"] = str(exc.retry_after)
            return response

    return wrapped


class _BadRequest(Exception):
    pass


async def _json_body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep for the decoder
        raise _BadRequest("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object")
    return body


def _now(request: web.Request) -> float:
    return request.app[MEETINGS_KEY].clock()


async def _readable_meeting(request: web.Request, action: str = audit.READ, detail: str = ""):
    """The meeting if the caller may read its history; the read (or export) is
    audited (sfu/audit.py) before the caller gets anything."""
    meeting = await _meeting_for_reader(request, "history")
    await _audit(request, meeting, action, audit.ATTENDANCE, meeting.meeting_id, detail)
    return meeting


@_handler
async def create_meeting(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await _json_body(request)
    topic = body.get("topic", "")
    room = body.get("room")
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC:
        raise _BadRequest(f"topic must be a string of at most {MAX_TOPIC} characters")
    if room is not None and (not isinstance(room, str) or not ROOM_RE.match(room)):
        raise _BadRequest("room name must be 1-64 characters of A-Z a-z 0-9 _ . ~ -")
    # only a host (of that room, when one is named) or an admin creates meetings:
    # a viewer cannot take a room before its host
    if not claims.grants.admin:
        if not claims.grants.host:
            raise AuthError(403, "creating a meeting needs the host grant")
        authorize(claims, room, "host")  # a named room: the token must be that room's
    meetings = request.app[MEETINGS_KEY]
    limiter = request.app[CREATE_LIMITER_KEY]
    meeting, created = await meetings.create_or_claim(
        room, topic.strip(), claims,
        check=lambda: limiter.check(claims, meetings.running_created_by(claims.identity)))
    return web.json_response(meeting_dict(meeting, _now(request)), status=201 if created else 200,
                             headers={"Location": f"/api/meetings/{meeting.meeting_id}"})


@_handler
async def list_meetings(request: web.Request) -> web.Response:
    claims = claims_of(request)
    try:
        limit = max(1, min(int(request.query.get("limit", "100")), 1000))
    except ValueError:
        raise _BadRequest("limit must be a number") from None
    store = request.app[MEETINGS_KEY].store
    meetings = await store.list_meetings(None if claims.grants.admin else claims.identity, limit)
    now = _now(request)
    return web.json_response({"meetings": [meeting_dict(m, now) for m in meetings]})


@_handler
async def get_meeting(request: web.Request) -> web.Response:
    meeting = await _readable_meeting(request)
    sessions = await request.app[MEETINGS_KEY].store.sessions(meeting.meeting_id)
    return web.json_response(attendance(meeting, sessions, _now(request)))


@_handler
async def export_meeting(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "json").lower()
    if fmt not in ("csv", "json"):
        raise _BadRequest("format must be csv or json")
    meeting = await _readable_meeting(request, audit.EXPORT, fmt)
    sessions = await request.app[MEETINGS_KEY].store.sessions(meeting.meeting_id)
    body, content_type = export(attendance(meeting, sessions, _now(request)), fmt)
    return web.Response(text=body, content_type=content_type, charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="meeting-{meeting.meeting_id}.{fmt}"'})


@_handler
async def end_meeting(request: web.Request) -> web.Response:
    claims = claims_of(request)
    meeting_id = request.match_info["meeting_id"]
    session_ids = await request.app[MEETINGS_KEY].end_meeting(meeting_id, claims)
    # whoever carries those sessions (WHIP/WHEP, the WebSocket) disconnects them on
    # the participant_left events with reason "kicked"
    return web.json_response({"meeting_id": meeting_id, "ended": True, "disconnected": len(session_ids)})


@_handler
async def erase_person(request: web.Request) -> web.Response:
    claims = claims_of(request)
    if not claims.grants.admin:
        raise AuthError(403, "only an admin may erase a person's history")
    identity = request.match_info["identity"]
    store = request.app[MEETINGS_KEY].store
    pseudonym = new_pseudonym()
    changed = await store.erase_identity(identity, pseudonym)
    # the audit row names the pseudonym, never the erased identity (an admin who
    # erases themselves is the pseudonym as actor too)
    actor = pseudonym if claims.identity == identity else claims.identity
    await audit.record(store, actor, audit.DELETE, audit.PERSON, pseudonym)
    event(logger, "person erased from history", rows=changed)
    return web.json_response({"erased": changed, "pseudonym": pseudonym})


def _limit(request: web.Request, default: int = 100) -> int:
    try:
        return max(1, min(int(request.query.get("limit", str(default))), 1000))
    except ValueError:
        raise _BadRequest("limit must be a number") from None


@_handler
async def my_meetings(request: web.Request) -> web.Response:
    """Own history: only the caller's own sessions, whatever their grants."""
    claims = claims_of(request)
    store = request.app[MEETINGS_KEY].store
    found = await attended(store, claims.identity, limit=_limit(request))
    await audit.record(store, claims.identity, audit.READ, audit.ATTENDANCE, audit.ALL, "own")
    now = _now(request)
    return web.json_response({"identity": claims.identity, "meetings": [
        own_meeting_dict(m, mine, claims.identity, now) for m, mine in found]})


@_handler
async def my_meeting(request: web.Request) -> web.Response:
    claims = claims_of(request)
    store = request.app[MEETINGS_KEY].store
    meeting_id = request.match_info["meeting_id"]
    found = await attended(store, claims.identity, meeting_id)
    if not found:
        if await store.get_meeting(meeting_id) is None:
            raise NotFound(meeting_id)
        raise AuthError(403, "you did not attend this meeting")
    await audit.record(store, claims.identity, audit.READ, audit.ATTENDANCE, meeting_id, "own")
    meeting, mine = found[0]
    return web.json_response(own_meeting_dict(meeting, mine, claims.identity, _now(request)))


@_handler
async def read_audit(request: web.Request) -> web.Response:
    claims = claims_of(request)
    if not claims.grants.admin:
        raise AuthError(403, "only an admin may read the audit log")
    q = request.query
    if q.get("action") not in (None, *audit.ACTIONS):
        raise _BadRequest(f"action must be one of {', '.join(audit.ACTIONS)}")
    if q.get("kind") not in (None, *audit.KINDS):
        raise _BadRequest(f"kind must be one of {', '.join(audit.KINDS)}")
    try:
        since = audit.parse_time(q["since"]) if q.get("since") else None
    except ValueError:
        raise _BadRequest("since must be an ISO 8601 date or time (2026-11-30T08:00:00Z)") from None
    rows = await audit.entries(request.app[MEETINGS_KEY].store, q.get("actor"), q.get("action"),
                               q.get("kind"), q.get("object_id"), since, limit=_limit(request, 1000))
    return web.json_response({"entries": [audit.entry_dict(r) for r in rows]})


@_handler
async def dev_token(request: web.Request) -> web.Response:
    """Development only: a token for any room and name, so the page works without a backend."""
    if not request.app[DEV_MODE_KEY]:
        return json_error(404, "token endpoint is only available with sfu serve --dev")
    body = await _json_body(request)
    room, name = body.get("room"), body.get("name")
    if not isinstance(room, str) or not ROOM_RE.match(room):
        raise _BadRequest("room name must be 1-64 characters of A-Z a-z 0-9 _ . ~ -")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise _BadRequest(f"name must be 1-{MAX_NAME} characters")
    # a new random identity: a caller never chooses whom it acts as (an "identity"
    # in the body is ignored); only a valid dev token it presents keeps its own dev
    # identity (the page stays the same person across rooms: its own history)
    identity = "dev-" + secrets.token_hex(8)
    if "Authorization" in request.headers:
        try:
            previous = claims_of(request).identity
        except AuthError:
            previous = ""
        if previous.startswith("dev-"):
            identity = previous
    grants = Grants(publish=True, subscribe=True, host=True)
    token = mint_token(request.app[AUTH_SECRET_KEY], identity, name.strip(), room, grants)
    return web.json_response({"token": token, "identity": identity, "room": room})


async def _meeting_for_reader(request: web.Request, what: str):
    """The meeting of the URL, when the caller may read its personal history (its
    creator, or an admin): 404 when there is none, 403 otherwise."""
    claims = claims_of(request)  # 401 before anything is looked up
    meeting = await request.app[MEETINGS_KEY].store.get_meeting(request.match_info["meeting_id"])
    if meeting is None:
        raise NotFound(request.match_info["meeting_id"])
    if not can_read_history(meeting, claims):
        raise AuthError(403, f"only the meeting's creator or an admin may read its {what}")
    return meeting


async def _audit(request: web.Request, meeting, action: str, kind: str, object_id: str, detail: str = "") -> None:
    """Record the read (sfu/audit.py) before anything is answered; the detail says as whom."""
    claims = claims_of(request)
    how = "creator" if meeting.creator_identity and meeting.creator_identity == claims.identity else "admin"
    await audit.record(request.app[MEETINGS_KEY].store, claims.identity, action, kind, object_id,
                       f"{how} {detail}".strip())


async def _chat_or_polls_of(request: web.Request, action: str, kind: str, detail: str = ""):
    """The meeting whose chat, polls or recordings the caller reads; audited."""
    meeting = await _meeting_for_reader(request, kind)
    await _audit(request, meeting, action, kind, meeting.meeting_id, detail)
    return meeting


@_handler
async def meeting_chat(request: web.Request) -> web.Response:
    meeting = await _chat_or_polls_of(request, audit.READ, audit.CHAT)
    messages = await stored_messages(request.app[MEETINGS_KEY].store, meeting.meeting_id)
    return web.json_response({"meeting_id": meeting.meeting_id, "messages": messages})


@_handler
async def meeting_polls(request: web.Request) -> web.Response:
    meeting = await _chat_or_polls_of(request, audit.READ, audit.POLL)
    polls = await stored_polls(request.app[MEETINGS_KEY].store, meeting.meeting_id)
    return web.json_response({"meeting_id": meeting.meeting_id, "polls": polls})


@_handler
async def export_meeting_polls(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "json").lower()
    if fmt not in ("csv", "json"):
        raise _BadRequest("format must be csv or json")
    meeting = await _chat_or_polls_of(request, audit.EXPORT, audit.POLL, fmt)
    body, content_type = export_polls(await stored_polls(request.app[MEETINGS_KEY].store, meeting.meeting_id), fmt)
    return web.Response(text=body, content_type=content_type, charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="polls-{meeting.meeting_id}.{fmt}"'})


@_handler
async def meeting_recordings(request: web.Request) -> web.Response:
    meeting = await _chat_or_polls_of(request, audit.READ, audit.RECORDING)
    recordings = await stored_recordings(request.app[MEETINGS_KEY].store, meeting.meeting_id)
    return web.json_response({"meeting_id": meeting.meeting_id, "recordings": recordings})


@_handler
async def recording_file(request: web.Request) -> web.StreamResponse:
    """One file of a recording, for the meeting's creator (or an admin); audited first."""
    store = request.app[MEETINGS_KEY].store
    recording_id, name = request.match_info["recording_id"], request.match_info["file"]
    meeting = await _meeting_for_reader(request, "recordings")
    path = await stored_file(store, meeting.meeting_id, recording_id, name)
    if path is None:
        return json_error(404, "no such recording file")
    await _audit(request, meeting, audit.EXPORT, audit.RECORDING, recording_id, name[:160])
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def add_routes(app: web.Application, meetings: MeetingService, auth_secret: str, dev: bool = False,
               limiter: CreateLimiter | None = None) -> None:
    app[MEETINGS_KEY] = meetings
    app[AUTH_SECRET_KEY] = auth_secret
    app[DEV_MODE_KEY] = dev
    app[CREATE_LIMITER_KEY] = limiter or CreateLimiter()
    app.router.add_post("/api/meetings", create_meeting)
    app.router.add_get("/api/meetings", list_meetings)
    app.router.add_get("/api/meetings/{meeting_id}", get_meeting)
    app.router.add_delete("/api/meetings/{meeting_id}", end_meeting)
    app.router.add_get("/api/meetings/{meeting_id}/export", export_meeting)
    app.router.add_get("/api/meetings/{meeting_id}/chat", meeting_chat)
    app.router.add_get("/api/meetings/{meeting_id}/polls", meeting_polls)
    app.router.add_get("/api/meetings/{meeting_id}/polls/export", export_meeting_polls)
    app.router.add_get("/api/meetings/{meeting_id}/recordings", meeting_recordings)
    app.router.add_get(r"/api/meetings/{meeting_id}/recordings/{recording_id}/{file:[0-9A-Za-z_.-]+}",
                       recording_file)
    app.router.add_delete("/api/people/{identity}", erase_person)
    app.router.add_get("/api/me/meetings", my_meetings)
    app.router.add_get("/api/me/meetings/{meeting_id}", my_meeting)
    app.router.add_get("/api/audit", read_audit)
    app.router.add_post("/api/dev/token", dev_token)

"""REST API for meetings and their history (mounted by :func:`sfu.api.make_app`).

Every request carries an access token (``Authorization: Bearer``, or a
``token`` query parameter).  Errors are JSON: ``{"error": "<one line>"}``.

| request | who | answer |
|---|---|---|
| ``POST /api/meetings`` ``{"topic", "room"?}`` | host grant (room: that room's), admin | 201 the meeting; 200 when it claims the room's running meeting that has no creator yet; 429 past the per-identity limits |
| ``GET /api/meetings`` | any | meetings the caller created; every meeting for an admin |
| ``GET /api/meetings/{id}`` | creator, admin | the meeting, its sessions, per-identity totals |
| ``GET /api/meetings/{id}/export?format=csv\\|json`` | creator, admin | attendance file |
| ``DELETE /api/meetings/{id}`` | host grant for its room (or the creator with a host grant), admin | ends it now, disconnects everyone |
| ``DELETE /api/people/{identity}`` | admin | anonymises that person's sessions and meetings |
| ``POST /api/dev/token`` ``{"room", "name"}`` | anyone, only with ``sfu serve --dev`` | a token for a new random identity |
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Callable

from aiohttp import web

from .auth import AuthError, Claims, Grants, authorize, mint_token, token_from_request, verify_token
from .history import attendance, export, meeting_dict
from .log import event
from .meetings import Conflict, CreateLimiter, MeetingService, NotFound, TooMany, can_read_history

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


async def _readable_meeting(request: web.Request):
    meetings = request.app[MEETINGS_KEY]
    claims = claims_of(request)
    meeting = await meetings.store.get_meeting(request.match_info["meeting_id"])
    if meeting is None:
        raise NotFound(request.match_info["meeting_id"])
    if not can_read_history(meeting, claims):
        raise AuthError(403, "only the meeting's creator or an admin may read its history")
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
    meeting = await _readable_meeting(request)
    fmt = request.query.get("format", "json").lower()
    if fmt not in ("csv", "json"):
        raise _BadRequest("format must be csv or json")
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
    changed = await request.app[MEETINGS_KEY].store.erase_identity(identity)
    event(logger, "person erased from history", rows=changed)
    return web.json_response({"erased": changed})


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
    # always a new random identity: a caller never chooses whom it acts as (an
    # "identity" in the body is ignored)
    identity = "dev-" + secrets.token_hex(8)
    grants = Grants(publish=True, subscribe=True, host=True)
    token = mint_token(request.app[AUTH_SECRET_KEY], identity, name.strip(), room, grants)
    return web.json_response({"token": token, "identity": identity, "room": room})


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
    app.router.add_delete("/api/people/{identity}", erase_person)
    app.router.add_post("/api/dev/token", dev_token)

"""HTTP signaling: WHIP (RFC 9725) and WHEP, /healthz, and the static test page.

Every response carries CORS headers so that a page on another origin can
publish and play; ``Location`` is exposed to such pages.
"""

from __future__ import annotations

import logging
import pathlib
import re
import secrets

from aiohttp import web

from . import __version__, signaling
from .auth import AuthError, authorize, token_from_request, verify_token
from .engine import MediaEngine
from .events import CloseReason, EngineEvent, LeaveReason, MeetingEvent, ParticipantLeft, SessionClosed
from .limits import LimitExceeded
from .log import event
from .metrics import install as install_metrics
from .meetings import CreateLimiter, MeetingService
from .rest import AUTH_SECRET_KEY, MEETINGS_KEY, add_routes, claims_of
from .sdp import SdpError

logger = logging.getLogger("sfu.api")

STATIC_DIR = pathlib.Path(__file__).parent / "static"
ROOM_RE = re.compile(r"^[A-Za-z0-9_.~-]{1,64}$")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Patch, Accept-Post",
    "Access-Control-Max-Age": "86400",
}

ENGINE_KEY = web.AppKey("engine", MediaEngine)
# WHIP/WHEP transport id -> meeting session id (see _track_meeting_sessions)
MEDIA_SESSIONS_KEY = web.AppKey("media_sessions", dict)
# WHIP/WHEP transport id -> identity of the token that created it (who may DELETE it)
SESSION_OWNERS_KEY = web.AppKey("session_owners", dict)


def _error(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", content_type="text/plain")


@web.middleware
async def cors_middleware(request: web.Request, handler):
    if request.method == "OPTIONS":
        response = web.Response(status=204)
        response.headers["Accept-Post"] = "application/sdp"
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _error(exc.status, exc.reason)
            if exc.status == 405:
                response.headers["Allow"] = "POST, DELETE, OPTIONS"
    response.headers.update(CORS_HEADERS)
    return response


async def _read_offer(request: web.Request, max_bytes: int) -> str:
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype != "application/sdp":
        raise _HttpError(415, "Content-Type must be application/sdp")
    if request.content_length is not None and request.content_length > max_bytes:
        raise _HttpError(413, f"SDP offer larger than {max_bytes} bytes")
    # read(n) returns what has arrived so far (at most n): read to the end, or past the limit
    body = bytearray()
    while len(body) <= max_bytes:
        chunk = await request.content.read(max_bytes + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > max_bytes:
        raise _HttpError(413, f"SDP offer larger than {max_bytes} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _HttpError(400, "SDP offer is not UTF-8 text") from None
    if not text.strip():
        raise _HttpError(400, "empty SDP offer")
    return text


class _HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _make_post(role: str, prefix: str):
    async def handler(request: web.Request) -> web.Response:
        engine = request.app[ENGINE_KEY]
        room = request.match_info["room"]
        if not ROOM_RE.match(room):
            return _error(400, "room name must be 1-64 characters of A-Z a-z 0-9 _ . ~ -")
        try:
            claims = verify_token(request.app[AUTH_SECRET_KEY], token_from_request(request))
            authorize(claims, room, role)  # the grant is named after the role
        except AuthError as exc:
            response = _error(exc.status, exc.reason)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="sfu"'  # RFC 6750 §3
            return response
        try:
            offer = await _read_offer(request, engine.config.max_sdp_bytes)
            info = engine.create_session(room, role, offer)
            request.app[SESSION_OWNERS_KEY][info.id] = claims.identity
        except _HttpError as exc:
            return _error(exc.status, exc.reason)
        except SdpError as exc:
            event(logger, "offer rejected", logging.INFO, role=role, room=room, reason=str(exc))
            return _error(400, str(exc).splitlines()[0] if str(exc) else "unusable SDP offer")
        except LimitExceeded as exc:  # 400 too many tracks, 403 room full, 503 server busy (README "Limits")
            response = _error(exc.status, exc.message)
            retry_after = exc.retry_after_header()
            if retry_after is not None:
                response.headers["Retry-After"] = retry_after
            return response
        meetings = request.app.get(MEETINGS_KEY)
        if meetings is not None:
            # the join is durable before the answer goes out
            try:
                _meeting, session_id = await meetings.join(claims, room)
            except Exception:
                logger.exception("could not record a join")
                engine.close_session(info.id, CloseReason.INTERNAL_ERROR)
                return _error(503, "meeting history unavailable")
            if engine.has_session(info.id):
                request.app[MEDIA_SESSIONS_KEY][info.id] = session_id
                ws_signaling = request.app.get(signaling.SIGNALING_KEY)
                if ws_signaling is not None:  # WebSocket participants see it join, with its tracks
                    ws_signaling.add_http_peer(info.id, claims, role, _meeting.meeting_id)
            else:  # closed while the join was written
                await meetings.leave(session_id, "left")
        location = f"/{prefix}/{room}/{info.id}"
        return web.Response(
            status=201,
            text=info.answer,
            content_type="application/sdp",
            headers={"Location": location, "ETag": f'"{info.id}"'},
        )

    return handler


def _make_delete(prefix: str):
    async def handler(request: web.Request) -> web.Response:
        """The session's own token (the same identity) or an admin's ends it: 401 without
        a valid token, 404 for no such session, 403 for another identity."""
        engine = request.app[ENGINE_KEY]
        try:
            claims = claims_of(request)
        except AuthError as exc:
            response = _error(exc.status, exc.reason)
            response.headers["WWW-Authenticate"] = 'Bearer realm="sfu"'
            return response
        session_id = request.match_info["session"]
        session = engine.describe_session(session_id)
        if session is None or session["room"] != request.match_info["room"]:
            return _error(404, "no such session")
        owner = request.app[SESSION_OWNERS_KEY].get(session_id)
        if not claims.grants.admin and (owner is None or claims.identity != owner):
            return _error(403, "only the token that created this session (its identity) or an admin may end it")
        engine.close_session(session_id)
        return web.Response(status=200)

    return handler


async def patch_session(request: web.Request) -> web.Response:
    # RFC 9725 §4.3.1: trickle ICE and ICE restarts are optional; an ICE-lite
    # server with its one candidate in the answer does not support them. The
    # answer is the same whether or not the session exists: a URL probe learns nothing.
    return web.Response(status=405, headers={"Allow": "POST, DELETE, OPTIONS"},
                        text="trickle ICE and ICE restart are not supported\n")


async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    return web.json_response({"status": "ok", "version": __version__, **engine.snapshot()})


async def index(request: web.Request) -> web.StreamResponse:
    """The meeting page (WebSocket protocol, sfu/signaling.py)."""
    return web.FileResponse(STATIC_DIR / "meeting.html")


async def whip_page(request: web.Request) -> web.StreamResponse:
    """The WHIP/WHEP test page."""
    return web.FileResponse(STATIC_DIR / "whip.html")


def _track_meeting_sessions(app: web.Application, engine: MediaEngine, meetings: MeetingService) -> None:
    """A WHIP/WHEP transport's meeting session ends when the transport closes, and a
    host ending the meeting (participant_left "kicked") closes the transport."""
    media_sessions = app[MEDIA_SESSIONS_KEY]

    def on_engine_event(ev: EngineEvent) -> None:
        if isinstance(ev, SessionClosed):
            session_id = media_sessions.pop(ev.session, None)
            if session_id is not None:
                meetings.leave_later(session_id, ev.reason.end_reason)

    def participant_left(ev: ParticipantLeft) -> None:
        if ev.reason is LeaveReason.KICKED:
            for transport_id, session_id in list(media_sessions.items()):
                if session_id == ev.session_id:
                    del media_sessions[transport_id]
                    engine.close_session(transport_id, CloseReason.KICKED)

    meeting_handlers = {ParticipantLeft: participant_left}

    def on_meeting_event(ev: MeetingEvent) -> None:
        handler = meeting_handlers.get(type(ev))
        if handler is not None:
            handler(ev)

    engine.add_listener(on_engine_event)
    meetings.add_listener(on_meeting_event)


def make_app(engine: MediaEngine, meetings: MeetingService | None = None, auth_secret: str | None = None,
             dev: bool = False) -> web.Application:
    """The HTTP app.  Without ``auth_secret`` a random one is used (nothing is open
    by default); without ``meetings`` WHIP/WHEP sessions are not recorded."""
    app = web.Application(middlewares=[cors_middleware], client_max_size=engine.config.max_sdp_bytes + 1024)
    app[ENGINE_KEY] = engine
    install_metrics(app, engine)  # GET /metrics, updated once a second while the app runs
    app[MEDIA_SESSIONS_KEY] = {}
    app[SESSION_OWNERS_KEY] = owners = {}

    def forget_owner(ev: EngineEvent) -> None:
        if isinstance(ev, SessionClosed):
            owners.pop(ev.session, None)

    engine.add_listener(forget_owner)
    app[AUTH_SECRET_KEY] = auth_secret or secrets.token_urlsafe(32)
    if meetings is not None:
        add_routes(app, meetings, app[AUTH_SECRET_KEY], dev,
                   limiter=CreateLimiter(engine.config.max_meetings_per_identity,
                                         engine.config.meetings_per_minute))
        _track_meeting_sessions(app, engine, meetings)
        signaling.add_routes(app, engine, meetings, app[AUTH_SECRET_KEY])  # GET /ws
    for prefix, role in (("whip", "publish"), ("whep", "subscribe")):
        app.router.add_post(f"/{prefix}/{{room}}", _make_post(role, prefix))
        app.router.add_delete(f"/{prefix}/{{room}}/{{session}}", _make_delete(prefix))
        app.router.add_patch(f"/{prefix}/{{room}}/{{session}}", patch_session)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_get("/whip.html", whip_page)
    app.router.add_static("/static/", STATIC_DIR)
    return app

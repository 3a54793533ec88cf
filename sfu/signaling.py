"""The meeting protocol: JSON over a WebSocket at ``/ws?token=<JWT>``.

docs/protocol.md describes it message by message. In short: the client sends
requests ``{"id": n, "type": ...}`` and gets one response each, ``{"id": n,
"type": "response", "ok": true, ...}`` or ``{"id": n, "type": "response", "ok":
false, "error": "...", "code": "..."}``; the server sends events ``{"type":
"event", "event": ...}``. The client always offers: one RTCPeerConnection per
participant carries its sendonly tracks and one recvonly transceiver per track
it receives; every ``offer`` says which published track each recvonly mid
should carry (``subscriptions``), and the engine binds exactly that producer
to that section (MediaEngine.update_session).

:class:`Signaling` is the protocol core: it takes decoded messages and a
:class:`~sfu.participant.Participant` (whose ``send``/``close`` queue output)
and drives the engine and the meeting service; it never touches a socket.
:func:`websocket_handler` is the aiohttp glue.

Rooms: the protocol keeps no room table of its own. Its participants live in the
meeting service's room registry (``MeetingService.rooms``, :class:`sfu.rooms.Rooms`),
next to each room's running meeting (and its recording state); the protocol adds a
participant when it joins (or a WHIP/WHEP session enters the meeting) and removes it
when it goes. The engine's and the meeting service's events reach it as typed events
(:mod:`sfu.events`), each dispatched by its type through one table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web

from . import sdp
from .auth import AuthError, Claims, authorize, token_from_request, verify_token
from .chat import Chat, RequestRefused
from .clock import Clock, as_clock
from .diagnostics import Diagnostics
from .events import (CloseReason, EngineEvent, EndReason, LeaveReason, MeetingEnded, MeetingEvent, ParticipantLeft,
                     SessionClosed, TrackUnpublished)
from .limits import LimitExceeded
from .log import event
from .meetings import can_end
from .outbox import Outbox
from .participant import DEFAULT_SOURCE, SOURCES, Participant, PublishedTrack
from .polls import Polls
from .recording import Recordings

logger = logging.getLogger("sfu.signaling")

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024  # an offer with many sections stays far below this
HEARTBEAT = 20.0  # seconds between WebSocket pings (RFC 6455 §5.5.2) from the server
OUTBOX_BYTES = 1024 * 1024  # queued bytes to one client before it is cut off as too slow (sfu/outbox.py)
CLOSE_GRACE = 5.0  # seconds a closing socket has to take what is queued and the close frame
MAX_ID_LENGTH = 64  # characters of a string request id (a longer one is not echoed back)
MAX_ID_NUMBER = 2**53  # a numeric id is a safe integer of JavaScript
KICK_GRACE = 2.0  # after a "kicked" history leave, wait this long for meeting_ended

# WebSocket close codes (RFC 6455 §7.4.2: 4000-4999 are for applications)
CLOSE_LEFT = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_MEETING_ENDED = 4000
CLOSE_KICKED = 4001
CLOSE_SERVER_STOPPED = 4002
CLOSE_TOO_SLOW = 4003
CLOSE_PROTOCOL = 4004


class ProtocolError(Exception):
    """A request that gets ``ok: false``; ``code`` is stable, ``message`` readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Signaling:
    """Participants of every room on this server, and the protocol's requests."""

    def __init__(self, engine, meetings, clock: Clock | Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.meetings = meetings
        self.clock: Clock = as_clock(clock)  # clock() for pong; the protocol's timers (sfu.clock)
        self.rooms = meetings.rooms  # the one room registry (sfu/rooms.py), the meeting service's
        store = getattr(meetings, "store", None)  # chat and polls (sfu/chat.py, sfu/polls.py)
        self.chat = Chat(engine.config, self.rooms, store, self.clock, meetings)
        self.polls = Polls(self.rooms, store, self.clock, meetings)
        self.recordings = Recordings(engine, self.rooms, store, meetings)  # recording by the SFU (sfu/recording.py)
        self._handlers: dict[str, Callable[[Participant, dict], Awaitable[dict]]] = {
            "join": self._join,
            "offer": self._offer,
            "mute": self._mute,
            "mute_participant": self._mute_participant,
            "leave": self._leave,
            "end_meeting": self._end_meeting,
            "ping": self._ping,
            "chat": self.chat.send,
            "chat_enable": self.chat.enable,
            "poll_create": self.polls.create,
            "poll_vote": self.polls.vote,
            "poll_close": self.polls.close,
            "recording_start": self.recordings.request_start,
            "recording_stop": self.recordings.request_stop,
            "recording_ack": self.recordings.request_ack,
        }
        self._engine_handlers: dict[type, Callable[[Any], None]] = {
            TrackUnpublished: self._track_unpublished,
            SessionClosed: self._session_closed,
        }
        self._meeting_handlers: dict[type, Callable[[Any], None]] = {
            MeetingEnded: self._meeting_ended,
            ParticipantLeft: self._participant_left,
        }
        engine.add_listener(self._on_engine_event)
        meetings.add_listener(self._on_meeting_event)
        # connection quality of each participant's media session, told to it alone (sfu/diagnostics.py)
        self.diagnostics = Diagnostics(lambda: self.engine.media_stats(), self.clock, self._quality_changed)

    # -- connections -------------------------------------------------------------------
    def connect(self, claims: Claims, room: str, send: Callable[[dict], None],
                close: Callable[[int, str], None]) -> Participant:
        """A socket authenticated for ``room``; it joins with a ``join`` request."""
        return Participant(claims=claims, room=room, send=send, close=close)

    async def handle(self, participant: Participant, message: Any) -> dict:
        """Handle one decoded client message: queue its response (and a close that
        the request caused only after it, so the response is not lost); return it."""
        participant.busy = True
        try:
            response = await self._respond(participant, message)
        finally:
            participant.busy = False
        participant.send(response)
        if participant.close_after_response is not None:
            code, reason = participant.close_after_response
            participant.close_after_response = None
            participant.close(code, reason)
        return response

    async def _respond(self, participant: Participant, message: Any) -> dict:
        if not isinstance(message, dict):
            return _error_response(None, ProtocolError("bad_request", "a message is a JSON object"))
        request_id = message.get("id")
        if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (int, str))):
            return _error_response(None, ProtocolError("bad_request", "id must be a number or a string"))
        if isinstance(request_id, str) and len(request_id) > MAX_ID_LENGTH \
                or isinstance(request_id, int) and abs(request_id) > MAX_ID_NUMBER:
            return _error_response(None, ProtocolError(
                "bad_request", f"id must be at most {MAX_ID_LENGTH} characters or a safe integer"))
        kind = message.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        try:
            if handler is None:
                raise ProtocolError("unknown_type", f"unknown message type {repr(message.get('type'))[:40]}")
            if participant.gone:
                raise ProtocolError("closed", "this connection has left the meeting")
            if not participant.joined and handler != self._join and handler != self._ping:
                raise ProtocolError("not_joined", "send join first")
            result = await handler(participant, message)
        except (ProtocolError, RequestRefused) as exc:
            return _error_response(request_id, exc)
        except AuthError as exc:
            return _error_response(request_id, ProtocolError("forbidden", exc.reason))
        except Exception:  # a bug must cost one request, not the connection or the room
            logger.exception("request failed", extra={"fields": {"type": message.get("type")}})
            return _error_response(request_id, ProtocolError("internal_error", "internal error"))
        return {"id": request_id, "type": "response", "ok": True, **result}

    def _close(self, participant: Participant, code: int, reason: str) -> None:
        if participant.busy:  # a request of its own is being answered: close after the response
            participant.close_after_response = (code, reason)
        else:
            participant.close(code, reason)

    async def disconnect(self, participant: Participant, reason: LeaveReason = LeaveReason.LEFT) -> None:
        """The socket is gone (or is being closed): free the media, record the leave."""
        if participant.gone:
            return
        participant.gone = True
        if participant.media_session is not None:
            self.diagnostics.forget(participant.media_session)
            # unpublishes its tracks first: the others get track_unpublished, then participant_left
            self.engine.close_session(participant.media_session, CloseReason.PARTICIPANT_LEFT)
            participant.media_session = None
        if participant.joined:
            self.rooms.remove(participant)
            self.recordings.left(participant.meeting_id, participant.id)  # no notice ack to wait for
            self._broadcast(participant, "participant_left", participant_id=participant.id, reason=reason)
            event(logger, "participant disconnected", room=participant.room, participant=participant.id,
                  reason=reason)
        if participant.session_id is not None:
            session_id, participant.session_id = participant.session_id, None
            await self.meetings.leave(session_id, reason)

    async def shutdown(self) -> None:
        """Server stop: tell everyone, close every socket, record "server stopped"."""
        await self.recordings.shutdown()  # the recordings' files closed, their history written
        for participant in self.rooms.all_participants():
            if participant.via != "ws":
                continue  # a WHIP/WHEP session: the engine closes it when it stops
            participant.event("server_stopping")
            participant.close(CLOSE_SERVER_STOPPED, "server stopped")
            await self.disconnect(participant, LeaveReason.SERVER_STOPPED)

    def participants(self, room: str) -> list[Participant]:
        return self.rooms.participants(room)

    # -- WHIP publishers and WHEP viewers ----------------------------------------------
    def add_http_peer(self, media_session: str, claims: Claims, role: str, meeting_id: str) -> Participant | None:
        """A WHIP ("publish") or WHEP ("subscribe") session whose join was recorded in
        ``meeting_id``: the WebSocket participants see it as a participant (``via``) with
        its tracks (audio: microphone, video: camera), and its leave when the session
        closes. Its history session stays with the WHIP/WHEP handler (sfu/api.py)."""
        desc = self.engine.describe_session(media_session)
        if desc is None:
            return None
        peer = Participant(claims=claims, room=desc["room"], send=lambda message: None,
                           close=lambda code, reason: self.engine.close_session(media_session, CloseReason.KICKED),
                           via="whip" if role == "publish" else "whep")
        peer.meeting_id = meeting_id
        peer.media_session = media_session
        peer.joined = True
        self.rooms.add(peer)
        self._broadcast(peer, "participant_joined", participant=peer.public())
        for mid, producer in desc["producers"].items():
            track = PublishedTrack(id=f"{peer.id}-{mid}", kind=producer["kind"],
                                   source=DEFAULT_SOURCE[producer["kind"]], mid=mid, producer_id=producer["id"])
            peer.tracks[track.id] = track
            self._broadcast(peer, "track_published", participant_id=peer.id, track=track.public())
        event(logger, "http peer in meeting", room=peer.room, meeting=meeting_id, participant=peer.id,
              via=peer.via, tracks=len(peer.tracks))
        return peer

    def _http_peer_closed(self, peer: Participant, engine_reason: CloseReason) -> None:
        if peer.gone:
            return
        peer.gone = True
        self.rooms.remove(peer)
        self._broadcast(peer, "participant_left", participant_id=peer.id, reason=engine_reason.end_reason)

    # -- recording notice ----------------------------------------------------------------
    def set_recording(self, meeting_id: str, active: bool) -> bool:
        """A recorder started (or stopped) recording ``meeting_id``: every participant is
        told with ``recording_changed``, later ones in their join response. True if it changed
        (False too if the meeting does not run here)."""
        live = self.rooms.live_by_id(meeting_id)
        if live is None or live.recording == active:
            return False
        live.recording = active
        for participant in self.rooms.participants(live.meeting.room):
            if participant.meeting_id == meeting_id and participant.joined and not participant.gone:
                participant.event("recording_changed", recording=active)
        event(logger, "recording changed", meeting=meeting_id, recording=active)
        return True

    # -- requests ----------------------------------------------------------------------
    async def _ping(self, participant: Participant, message: dict) -> dict:
        return {"pong": True, "time": self.clock()}

    async def _join(self, participant: Participant, message: dict) -> dict:
        if participant.joined:
            raise ProtocolError("already_joined", "already joined")
        room = message.get("room", participant.room)
        if room != participant.room:
            raise ProtocolError("forbidden", "the access token is for another room")
        meeting, session_id = await self.meetings.join(participant.claims, participant.room)
        if participant.gone:  # the socket closed while the join was written
            await self.meetings.leave(session_id, LeaveReason.LEFT)
            raise ProtocolError("closed", "connection closed")
        participant.meeting_id = meeting.meeting_id
        participant.session_id = session_id
        participant.joined = True
        # host powers come from the token only (host grant for this room, or admin), never
        # from having come first; meetings.join made a host-grant joiner the creator if none
        participant.host = can_end(meeting, participant.claims)
        others = [p.public() for p in self.rooms.participants(participant.room)]
        self.rooms.add(participant)
        self._broadcast(participant, "participant_joined", participant={"id": participant.id,
                                                                          "name": participant.name, "tracks": []})
        grants = participant.claims.grants
        event(logger, "participant joined meeting", room=participant.room, meeting=meeting.meeting_id,
              participant=participant.id)
        return {
            "protocol": PROTOCOL_VERSION,
            "participant_id": participant.id,
            "name": participant.name,
            "meeting": {"id": meeting.meeting_id, "room": meeting.room, "topic": meeting.topic,
                        "started_at": meeting.started_at, "creator_name": meeting.creator_name},
            "permissions": {"publish": grants.publish, "subscribe": grants.subscribe,
                            "end_meeting": participant.host, "mute_others": participant.host,
                            "record": participant.host,
                            "chat_enable": participant.host, "polls": participant.host},
            "recording": bool(live.recording if (live := self.rooms.live_by_id(meeting.meeting_id)) else False)
            or self.recordings.state(meeting.meeting_id) is not None,
            "sfu_recording": self.recordings.state(meeting.meeting_id),  # its notice, to acknowledge
            "participants": others,
            "chat": self.chat.join_info(meeting.meeting_id),
            "polls": self.polls.join_info(participant),
        }

    async def _offer(self, participant: Participant, message: dict) -> dict:
        offer_sdp = message.get("sdp")
        if not isinstance(offer_sdp, str) or not offer_sdp.strip():
            raise ProtocolError("bad_request", "offer needs an sdp string")
        tracks_info = _object(message, "tracks")
        wanted = _object(message, "subscriptions")
        try:
            offer = sdp.parse_sdp(offer_sdp, self.engine.config.max_offer_sections)
        except sdp.SdpError as exc:
            raise ProtocolError("bad_sdp", str(exc)) from None
        sending = [m for m in offer.media if not m.rejected and m.direction in ("sendonly", "sendrecv")
                   and m.kind in ("audio", "video")]
        receiving = [m for m in offer.media if not m.rejected and m.direction == "recvonly"]
        grants = participant.claims.grants
        if sending and not grants.publish:
            raise ProtocolError("forbidden", "access token lacks the publish grant")
        if (receiving or wanted) and not grants.subscribe:
            raise ProtocolError("forbidden", "access token lacks the subscribe grant")
        # track ids -> producers of others in this meeting
        by_track = {t.id: t for p in self.rooms.participants(participant.room) if p is not participant
                    for t in p.tracks.values()}
        subscriptions: dict[str, str] = {}
        for mid, track_id in wanted.items():
            if not isinstance(track_id, str) and track_id is not None:
                raise ProtocolError("bad_request", "subscriptions map a mid to a track id or null")
            track = by_track.get(track_id) if track_id is not None else None
            if track is not None:
                subscriptions[mid] = track.producer_id
        try:
            if participant.media_session is None:
                info = self.engine.create_session(participant.room, "meeting", offer_sdp, subscriptions)
                participant.media_session = info.id
                answer = info.answer
                self.diagnostics.watch(info.id, participant)
            else:
                answer = self.engine.update_session(participant.media_session, offer_sdp, subscriptions)
        except sdp.SdpError as exc:
            raise ProtocolError("bad_sdp", str(exc).splitlines()[0] if str(exc) else "unusable offer") from None
        except KeyError:
            raise ProtocolError("media_closed", "the media session is gone; offer from a new connection") from None
        except LimitExceeded as exc:  # too_many_tracks, room_full, server_busy (docs/protocol.md)
            raise ProtocolError(exc.code, exc.message) from None
        desc = self.engine.describe_session(participant.media_session)
        published: dict[str, str] = {}
        for mid, producer in desc["producers"].items():
            track = next((t for t in participant.tracks.values() if t.producer_id == producer["id"]), None)
            if track is None:
                info_for_mid = tracks_info.get(mid) if isinstance(tracks_info.get(mid), dict) else {}
                source = info_for_mid.get("source", DEFAULT_SOURCE[producer["kind"]])
                if source not in SOURCES:
                    source = DEFAULT_SOURCE[producer["kind"]]
                track = PublishedTrack(id=f"{participant.id}-{mid}", kind=producer["kind"], source=source,
                                       mid=mid, producer_id=producer["id"],
                                       muted=bool(info_for_mid.get("muted", False)))
                participant.tracks[track.id] = track
                self._broadcast(participant, "track_published", participant_id=participant.id,
                                track=track.public())
            published[mid] = track.id
        producer_to_track = {t.producer_id: t.id for t in by_track.values()}
        participant.subscriptions = {
            mid: producer_to_track.get(c["producer"]) if c["producer"] else None
            for mid, c in desc["consumers"].items()
        }
        return {"sdp": answer, "published": published, "subscriptions": participant.subscriptions}

    async def _mute(self, participant: Participant, message: dict) -> dict:
        track_id = message.get("track_id")
        muted = message.get("muted")
        if not isinstance(muted, bool):
            raise ProtocolError("bad_request", "muted must be true or false")
        track = participant.tracks.get(track_id) if isinstance(track_id, str) else None
        if track is None:
            raise ProtocolError("not_found", "no such track of yours")
        if not muted and track.muted_by_host:  # its owner lifts a host mute: forwarding resumes
            track.muted_by_host = False
            self.engine.pause_producer(track.producer_id, False)
        if track.muted != muted:
            track.muted = muted
            self._broadcast(participant, "mute_changed", participant_id=participant.id, track_id=track.id,
                            muted=muted, by_host=False)
        return {"track_id": track.id, "muted": muted}

    async def _mute_participant(self, participant: Participant, message: dict) -> dict:
        """A host mutes another participant's tracks of one kind (default audio). The SFU
        holds their media (MediaEngine.pause_producer) until their owner unmutes them
        with its own ``mute``; a host cannot unmute anyone."""
        if not participant.host:
            raise ProtocolError("forbidden", "only a host may mute others")
        kind = message.get("kind", "audio")
        if kind not in ("audio", "video"):
            raise ProtocolError("bad_request", "kind must be audio or video")
        if message.get("muted", True) is not True:
            raise ProtocolError("bad_request", "a host can only mute; participants unmute themselves")
        target_id = message.get("participant_id")
        room = self.rooms.get(participant.room)
        target = room.participants.get(target_id) if room is not None and isinstance(target_id, str) else None
        if target is None or target.meeting_id != participant.meeting_id or target.gone:
            raise ProtocolError("not_found", "no such participant")
        muted: list[str] = []
        for track in target.tracks.values():
            if track.kind != kind:
                continue
            muted.append(track.id)
            if track.muted_by_host:
                continue
            track.muted_by_host = True
            track.muted = True
            self.engine.pause_producer(track.producer_id, True)
            self._broadcast(target, "mute_changed", participant_id=target.id, track_id=track.id, muted=True,
                            by_host=True)
        if muted:
            target.event("muted_by_host", track_ids=muted, kind=kind, by={"id": participant.id,
                                                                           "name": participant.name})
        event(logger, "participant muted by host", room=participant.room, participant=target.id,
              host=participant.id, kind=kind, tracks=len(muted))
        return {"participant_id": target.id, "kind": kind, "track_ids": muted}

    async def _leave(self, participant: Participant, message: dict) -> dict:
        await self.disconnect(participant, LeaveReason.LEFT)
        self._close(participant, CLOSE_LEFT, "left")
        return {}

    async def _end_meeting(self, participant: Participant, message: dict) -> dict:
        meeting_id = participant.meeting_id
        await self.meetings.end_meeting(meeting_id, by=participant.claims)
        # the meeting service's meeting_ended event normally ended it for everyone already
        for other in self.participants(participant.room):
            if other.meeting_id == meeting_id:
                self._end_for(other, EndReason.ENDED_BY_HOST)
        return {"ended": True}

    # -- events from the engine and the meeting service ----------------------------------
    def _on_engine_event(self, ev: EngineEvent) -> None:
        handler = self._engine_handlers.get(type(ev))
        if handler is not None:
            handler(ev)

    def _track_unpublished(self, ev: TrackUnpublished) -> None:
        for participant in self.rooms.participants(ev.room):
            track = next((t for t in participant.tracks.values() if t.producer_id == ev.producer), None)
            if track is not None:
                del participant.tracks[track.id]
                if participant.joined:
                    self._broadcast(participant, "track_unpublished", participant_id=participant.id,
                                    track_id=track.id)
                return

    def _session_closed(self, ev: SessionClosed) -> None:
        participant = next((p for p in self.rooms.participants(ev.room) if p.media_session == ev.session), None)
        if participant is None:
            return
        self.diagnostics.forget(ev.session)
        participant.media_session = None
        if participant.via != "ws":
            self._http_peer_closed(participant, ev.reason)
        elif not participant.gone:
            participant.event("media_closed", reason=ev.reason.told)

    def _on_meeting_event(self, ev: MeetingEvent) -> None:
        handler = self._meeting_handlers.get(type(ev))
        if handler is not None:
            handler(ev)

    def _meeting_ended(self, ev: MeetingEnded) -> None:
        for participant in self.rooms.all_participants():
            if participant.meeting_id == ev.meeting_id:
                self._end_for(participant, ev.reason)

    def _participant_left(self, ev: ParticipantLeft) -> None:
        if ev.reason is not LeaveReason.KICKED:
            return
        participant = next((p for p in self.rooms.participants(ev.room) if p.session_id == ev.session_id), None)
        if participant is None or participant.gone:
            return
        # its history session is closed already; meeting_ended normally follows at once
        participant.session_id = None
        self.clock.call_later(KICK_GRACE, self._kick, participant)

    def _end_for(self, participant: Participant, reason: EndReason) -> None:
        """meeting_ended to one participant, then its socket closes."""
        if participant.gone or participant.ending:
            return
        participant.ending = True
        participant.event("meeting_ended", reason=reason)
        self._close(participant, CLOSE_MEETING_ENDED, "meeting ended")
        _spawn(self.disconnect(participant, LeaveReason.KICKED))

    def _kick(self, participant: Participant) -> None:
        if participant.gone or participant.ending:
            return
        participant.ending = True
        participant.event("kicked")
        self._close(participant, CLOSE_KICKED, "removed from the meeting")
        _spawn(self.disconnect(participant, LeaveReason.KICKED))

    def _quality_changed(self, participant: Participant, report: dict) -> None:
        """Its connection quality changed: to this participant only (docs/protocol.md)."""
        if participant.joined and not participant.gone and not participant.ending:
            participant.event("connection_quality", **report)

    # -- helpers -----------------------------------------------------------------------
    def _broadcast(self, source: Participant, name: str, **fields) -> None:
        for other in self.rooms.participants(source.room):
            if other is not source and other.joined and not other.gone \
                    and other.meeting_id == source.meeting_id:
                other.event(name, **fields)


def _object(message: dict, key: str) -> dict:
    value = message.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("bad_request", f"{key} must be an object keyed by mid")
    return value


def _error_response(request_id, exc: ProtocolError) -> dict:
    return {"id": request_id, "type": "response", "ok": False, "error": exc.message, "code": exc.code,
            **getattr(exc, "extra", {})}


_background: set[asyncio.Task] = set()


def _spawn(coro) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


# -- aiohttp glue ---------------------------------------------------------------------------

SIGNALING_KEY = web.AppKey("signaling", Signaling)
WS_AUTH_SECRET_KEY = web.AppKey("ws_auth_secret", str)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    signaling = request.app[SIGNALING_KEY]
    try:
        claims = verify_token(request.app[WS_AUTH_SECRET_KEY], token_from_request(request))
        room = request.query.get("room") or claims.room
        if room is None:
            raise AuthError(403, "access token is not valid for any room")
        authorize(claims, room, None)
    except AuthError as exc:
        headers = {"WWW-Authenticate": 'Bearer realm="sfu"'} if exc.status == 401 else {}
        return web.Response(status=exc.status, text=exc.reason + "\n", headers=headers)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    transport = request.transport
    outbox = Outbox(OUTBOX_BYTES)  # bounded in bytes; merges bursts if the client asks at join
    wake = asyncio.Event()
    closing: list[tuple[int, str]] = []
    cut: list[str] = []  # the transport was aborted: nothing more is written

    def send(message: dict) -> None:
        if closing:
            return
        if not outbox.put(message):
            too_slow()
            return
        wake.set()

    def too_slow() -> None:
        """The client does not read what it is sent: drop the queue and cut the connection
        now (a close frame could not get through a full socket anyway); it leaves as timed out."""
        event(logger, "websocket client too slow", logging.WARNING, room=room, participant=participant.id,
              queued_bytes=outbox.bytes)
        closing.append((CLOSE_TOO_SLOW, "client too slow"))
        abort()

    def abort() -> None:
        if not cut:
            cut.append("aborted")
            outbox.clear()
            if transport is not None:
                transport.abort()
            wake.set()

    def close(code: int, reason: str) -> None:
        if not closing:
            closing.append((code, reason))
            wake.set()
            # a client that does not read cannot get the close frame: cut it after a grace
            grace.append(signaling.clock.call_later(CLOSE_GRACE, lambda: writer_task.done() or abort()))

    async def writer() -> None:
        while True:
            wake.clear()
            while outbox and not cut:
                try:
                    await ws.send_str(outbox.pop())
                except (ConnectionError, RuntimeError):
                    return
            if closing or cut:
                break
            await wake.wait()
        if cut:
            return
        code, reason = closing[0]
        try:
            await ws.close(code=code, message=reason.encode()[:120])
        except (ConnectionError, RuntimeError):
            pass

    grace: list[asyncio.TimerHandle] = []
    participant = signaling.connect(claims, room, send, close)
    writer_task = asyncio.create_task(writer())
    reason = LeaveReason.LEFT
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    message = json.loads(msg.data)
                except (ValueError, RecursionError):  # RecursionError: nested too deep for the decoder
                    send(_error_response(None, ProtocolError("bad_request", "not JSON")))
                    continue
                if isinstance(message, dict) and message.get("type") == "join" and not participant.joined:
                    outbox.merge = message.get("batch_events") is True  # docs/protocol.md 4.1
                await signaling.handle(participant, message)  # queues the response
            elif msg.type == WSMsgType.BINARY:
                send(_error_response(None, ProtocolError("bad_request", "binary messages are not used")))
            else:
                break
        if cut or ws.close_code not in (CLOSE_LEFT, CLOSE_GOING_AWAY):
            reason = LeaveReason.TIMED_OUT  # 1006 and friends, or too slow: nobody said goodbye
    except asyncio.CancelledError:
        reason = LeaveReason.SERVER_STOPPED
        raise
    finally:
        await signaling.disconnect(participant, reason)  # nothing if it left or was ended already
        close(CLOSE_GOING_AWAY, "")
        try:
            await asyncio.wait_for(writer_task, CLOSE_GRACE)
        except (asyncio.TimeoutError, Exception):
            writer_task.cancel()
            abort()  # it does not read: its descriptor must not wait for it
        for handle in grace:
            handle.cancel()
    return ws


async def recording_handler(request: web.Request) -> web.Response:
    """``POST /api/meetings/{id}/recording`` ``{"active": bool}``: what a recorder calls
    when it starts or stops recording a running meeting (a token with the host grant for
    its room, or admin: meetings.can_end), so that every participant is told
    (``recording_changed``)."""
    signaling = request.app[SIGNALING_KEY]
    try:
        claims = verify_token(request.app[WS_AUTH_SECRET_KEY], token_from_request(request))
    except AuthError as exc:
        return web.json_response({"error": exc.reason}, status=exc.status)
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
        return web.json_response({"error": 'body must be {"active": true|false}'}, status=400)
    meeting_id = request.match_info["meeting_id"]
    meeting = await signaling.meetings.store.get_meeting(meeting_id)
    if meeting is None:
        return web.json_response({"error": "no such meeting"}, status=404)
    if not can_end(meeting, claims):
        return web.json_response({"error": "only a host of the meeting may change its recording state"},
                                 status=403)
    if meeting.ended_at is not None:
        return web.json_response({"error": "the meeting has ended"}, status=409)
    signaling.set_recording(meeting_id, body["active"])
    return web.json_response({"meeting_id": meeting_id, "recording": body["active"]})


async def diagnostics_handler(request: web.Request) -> web.Response:
    """``GET /api/participants/{participant_id}/diagnostics``: a participant's own
    connection quality (sfu/diagnostics.py), for a token of the same identity only."""
    signaling = request.app[SIGNALING_KEY]
    try:
        claims = verify_token(request.app[WS_AUTH_SECRET_KEY], token_from_request(request))
    except AuthError as exc:
        return web.json_response({"error": exc.reason}, status=exc.status)
    participant_id = request.match_info["participant_id"]
    participant = next((p for p in signaling.rooms.all_participants()
                        if p.id == participant_id and p.via == "ws" and not p.gone), None)
    if participant is None:
        return web.json_response({"error": "no such participant"}, status=404)
    if participant.claims.identity != claims.identity:
        return web.json_response({"error": "only the participant itself may read its diagnostics"}, status=403)
    report = signaling.diagnostics.report(participant.media_session) \
        or {"level": "unknown", "reason": None, "uplink": None, "downlink": None}
    return web.json_response({"participant_id": participant.id, **report})


def add_routes(app: web.Application, engine, meetings, auth_secret: str) -> Signaling:
    """Mount ``/ws`` and ``POST /api/meetings/{id}/recording`` on ``app``; sockets are
    closed when the app shuts down."""
    signaling = Signaling(engine, meetings)
    app[SIGNALING_KEY] = signaling
    app[WS_AUTH_SECRET_KEY] = auth_secret
    app.router.add_get("/ws", websocket_handler)
    app.router.add_post("/api/meetings/{meeting_id}/recording", recording_handler)
    app.router.add_get("/api/participants/{participant_id}/diagnostics", diagnostics_handler)

    async def on_shutdown(_app: web.Application) -> None:
        await signaling.shutdown()

    app.on_shutdown.append(on_shutdown)
    return signaling

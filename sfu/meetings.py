"""The meeting life cycle, recorded in the history store.

One :class:`MeetingService` per server.  WHIP/WHEP and the WebSocket protocol
call :meth:`MeetingService.join` when someone enters a room and
:meth:`MeetingService.leave` when they go.  The first join into a room with no
running meeting starts one (its creator is that participant); a meeting whose
last participant left ends after ``grace_period`` seconds unless someone joins
again; a host ends it at once with :meth:`end_meeting`.

Open sessions get a heartbeat in the store every ``heartbeat_interval``
seconds (one batched write), so that after a crash :meth:`start` closes them
at their last heartbeat with reason "server stopped".  Meetings that ended
more than ``retention_days`` ago are purged at start and once a day.

Listeners get event dicts: ``meeting_started``, ``meeting_ended``,
``participant_joined``, ``participant_left``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from .auth import AuthError, Claims
from .history import END_REASONS, DuplicateMeeting, HistoryStore, Meeting, SessionRecord
from .log import event

logger = logging.getLogger("sfu.meetings")

# no 0/o, 1/l/i: an ID read aloud or copied by hand survives
ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
RETENTION_CHECK_INTERVAL = 24 * 3600.0


def new_meeting_id() -> str:
    """Three groups of three, e.g. ``kfz-8rq-2mw`` (31**9, about 2**44.6 ids)."""
    return "-".join("".join(secrets.choice(ID_ALPHABET) for _ in range(3)) for _ in range(3))


class NotFound(LookupError):
    """No such meeting (or session)."""


class Conflict(Exception):
    """The request clashes with the current state (e.g. the room has a running meeting)."""


@dataclass
class _Live:
    """A running meeting and its connected sessions."""

    meeting: Meeting
    sessions: set[str] = field(default_factory=set)
    end_timer: asyncio.TimerHandle | None = None


@dataclass
class _LiveSession:
    session_id: str
    meeting_id: str
    room: str
    identity: str
    name: str


def can_read_history(meeting: Meeting, claims: Claims) -> bool:
    """Only the meeting's creator or an admin may read who attended."""
    return claims.grants.admin or claims.identity == meeting.creator_identity


def can_end(meeting: Meeting, claims: Claims) -> bool:
    if claims.grants.admin or claims.identity == meeting.creator_identity:
        return True
    return claims.grants.host and claims.room == meeting.room


class MeetingService:
    def __init__(self, store: HistoryStore, grace_period: float = 30.0, heartbeat_interval: float = 10.0,
                 retention_days: float = 180.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.grace_period = grace_period
        self.heartbeat_interval = heartbeat_interval
        self.retention_days = retention_days
        self.clock = clock
        self._by_room: dict[str, _Live] = {}
        self._by_id: dict[str, _Live] = {}
        self._sessions: dict[str, _LiveSession] = {}
        self._listeners: list[Callable[[dict], None]] = []
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._ending: set[asyncio.Task] = set()
        self.started = False

    # -- life cycle --------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        closed, ended = await self.store.recover()
        if closed or ended:
            event(logger, "history recovered after an unclean stop", logging.WARNING,
                  sessions_closed=closed, meetings_ended=ended)
        await self.purge_expired()
        self._tasks = [asyncio.create_task(self._heartbeat_loop(), name="history-heartbeat"),
                       asyncio.create_task(self._retention_loop(), name="history-retention")]
        self.started = True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)
        for session_id in list(self._sessions):
            await self.leave(session_id, "server stopped", schedule_end=False)
        for live in list(self._by_id.values()):
            await self._end(live, "server stopped")
        await self.store.close()
        self.started = False

    # -- queries -----------------------------------------------------------------------
    def active_meeting(self, room: str) -> Meeting | None:
        live = self._by_room.get(room)
        return live.meeting if live else None

    def session(self, session_id: str) -> _LiveSession | None:
        return self._sessions.get(session_id)

    def sessions_in(self, meeting_id: str) -> list[str]:
        live = self._by_id.get(meeting_id)
        return sorted(live.sessions) if live else []

    # -- commands ----------------------------------------------------------------------
    async def create_meeting(self, room: str | None, topic: str, creator: Claims) -> Meeting:
        """A meeting in ``room`` (default: a room named after the meeting ID).
        Conflict if that room has a running meeting."""
        async with self._lock:
            if room is not None and room in self._by_room:
                raise Conflict(f"room {room} has a running meeting")
            meeting = await self._new_meeting(room, topic, creator)
            # nobody is in it yet: it ends like an emptied meeting unless someone joins
            self._schedule_end(self._by_id[meeting.meeting_id], max(self.grace_period, 3600.0))
            return meeting

    async def join(self, claims: Claims, room: str) -> tuple[Meeting, str]:
        """Record ``claims`` joining ``room``; durable before it returns."""
        async with self._lock:
            live = self._by_room.get(room)
            if live is None:
                await self._new_meeting(room, "", claims)
                live = self._by_room[room]
            if live.end_timer is not None:
                live.end_timer.cancel()
                live.end_timer = None
            now = self.clock()
            session_id = uuid.uuid4().hex
            record = SessionRecord(session_id, live.meeting.meeting_id, claims.identity, claims.name,
                                   now, None, now, None)
            await self.store.add_session(record)
            live.sessions.add(session_id)
            self._sessions[session_id] = _LiveSession(session_id, live.meeting.meeting_id, room,
                                                      claims.identity, claims.name)
        event(logger, "participant joined", meeting=live.meeting.meeting_id, room=room,
              session=session_id, identity=claims.identity)
        self._emit({"type": "participant_joined", "meeting_id": live.meeting.meeting_id, "room": room,
                    "session_id": session_id, "identity": claims.identity, "name": claims.name})
        return live.meeting, session_id

    async def leave(self, session_id: str, reason: str = "left", schedule_end: bool = True) -> None:
        """Record a session's end; idempotent.  The last one out starts the grace period."""
        if reason not in END_REASONS:
            event(logger, "unknown end reason recorded as left", logging.WARNING, reason=reason)
            reason = "left"
        info = self._sessions.pop(session_id, None)
        if info is None:
            return
        live = self._by_id.get(info.meeting_id)
        if live is not None:
            live.sessions.discard(session_id)
        try:
            await self.store.close_session(session_id, self.clock(), reason)
        finally:
            event(logger, "participant left", meeting=info.meeting_id, room=info.room,
                  session=session_id, identity=info.identity, reason=reason)
            self._emit({"type": "participant_left", "meeting_id": info.meeting_id, "room": info.room,
                        "session_id": session_id, "identity": info.identity, "name": info.name,
                        "reason": reason})
            if schedule_end and live is not None and not live.sessions and live.end_timer is None \
                    and self._by_id.get(info.meeting_id) is live:
                self._schedule_end(live, self.grace_period)

    def leave_later(self, session_id: str, reason: str = "left") -> None:
        """:meth:`leave` from synchronous code (an engine event); :meth:`stop` waits for it."""
        if session_id not in self._sessions:
            return
        task = asyncio.get_running_loop().create_task(self.leave(session_id, reason))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def end_meeting(self, meeting_id: str, by: Claims) -> list[str]:
        """A host ends the meeting now; returns the session ids the caller must disconnect."""
        async with self._lock:
            live = self._by_id.get(meeting_id)
            if live is None:
                meeting = await self.store.get_meeting(meeting_id)
                if meeting is None:
                    raise NotFound(meeting_id)
                if not can_end(meeting, by):
                    raise AuthError(403, "only the meeting's host may end it")
                return []  # ended already
            if not can_end(live.meeting, by):
                raise AuthError(403, "only the meeting's host may end it")
            session_ids = sorted(live.sessions)
            for session_id in session_ids:
                await self.leave(session_id, "kicked", schedule_end=False)
            await self._end(live, "ended by host")
            return session_ids

    def add_listener(self, cb: Callable[[dict], None]) -> None:
        self._listeners.append(cb)

    # -- internals ---------------------------------------------------------------------
    async def _new_meeting(self, room: str | None, topic: str, creator: Claims) -> Meeting:
        """Insert a new meeting (caller holds the lock)."""
        for _attempt in range(20):
            meeting_id = new_meeting_id()
            meeting = Meeting(meeting_id, room or meeting_id, topic or "", creator.identity,
                              creator.name, self.clock(), None)
            try:
                await self.store.create_meeting(meeting)
            except DuplicateMeeting:
                continue
            break
        else:  # pragma: no cover - 20 collisions in a 2**44 space
            raise RuntimeError("could not allocate a meeting id")
        live = _Live(meeting)
        self._by_room[meeting.room] = live
        self._by_id[meeting.meeting_id] = live
        event(logger, "meeting started", meeting=meeting.meeting_id, room=meeting.room,
              creator=creator.identity)
        self._emit({"type": "meeting_started", "meeting_id": meeting.meeting_id, "room": meeting.room,
                    "topic": meeting.topic})
        return meeting

    def _schedule_end(self, live: _Live, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            live.end_timer = None
            if live.sessions or self._by_id.get(live.meeting.meeting_id) is not live:
                return
            task = loop.create_task(self._end_if_empty(live))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

        live.end_timer = loop.call_later(delay, fire)

    async def _end_if_empty(self, live: _Live) -> None:
        async with self._lock:
            if not live.sessions and self._by_id.get(live.meeting.meeting_id) is live:
                await self._end(live, "empty")

    async def _end(self, live: _Live, why: str) -> None:
        meeting = live.meeting
        if live.end_timer is not None:
            live.end_timer.cancel()
            live.end_timer = None
        self._by_id.pop(meeting.meeting_id, None)
        if self._by_room.get(meeting.room) is live:
            del self._by_room[meeting.room]
        meeting.ended_at = self.clock()
        try:
            await self.store.end_meeting(meeting.meeting_id, meeting.ended_at)
        except Exception:
            logger.exception("could not record the end of a meeting",
                             extra={"fields": {"meeting": meeting.meeting_id}})
        event(logger, "meeting ended", meeting=meeting.meeting_id, room=meeting.room, why=why)
        self._emit({"type": "meeting_ended", "meeting_id": meeting.meeting_id, "room": meeting.room,
                    "reason": why})

    def _emit(self, ev: dict) -> None:
        for cb in list(self._listeners):
            try:
                cb(ev)
            except Exception:
                logger.exception("meeting listener failed")

    async def beat(self) -> None:
        """One heartbeat for every open session (the loop calls this; tests too)."""
        if self._sessions:
            await self.store.heartbeat(list(self._sessions), self.clock())

    async def purge_expired(self) -> int:
        cutoff = self.clock() - self.retention_days * 86400.0
        count = await self.store.purge(cutoff)
        if count:
            event(logger, "history purged", meetings=count, retention_days=self.retention_days)
        return count

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self.beat()
            except Exception:
                logger.exception("history heartbeat failed")

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_CHECK_INTERVAL)
            try:
                await self.purge_expired()
            except Exception:
                logger.exception("history purge failed")


__all__ = ["Conflict", "Meeting", "MeetingService", "NotFound", "can_end", "can_read_history",
           "new_meeting_id"]

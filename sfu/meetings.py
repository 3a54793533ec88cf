"""The meeting life cycle, recorded in the history store.

One :class:`MeetingService` per server.  WHIP/WHEP and the WebSocket protocol
call :meth:`MeetingService.join` when someone enters a room and
:meth:`MeetingService.leave` when they go.  The first join into a room with no
running meeting starts one; a meeting whose last participant left ends after
``grace_period`` seconds unless someone joins again; a host ends it at once
with :meth:`end_meeting`.

Authority: a meeting's creator is always someone whose token carried the host
grant for its room (or admin): whoever creates it with ``POST /api/meetings``,
or the first such joiner.  A meeting started by the join of someone without
the host grant has no creator (``creator_identity`` '') until a host joins it
or claims it with ``POST /api/meetings`` for its room; so a viewer who comes
first cannot squat the room.  Host powers (end, mute others, the recording
notice) need the host grant in the token (or admin): :func:`can_end`.

Open sessions get a heartbeat in the store every ``heartbeat_interval``
seconds (one batched write), so that after a crash :meth:`start` closes them
at their last heartbeat with reason "server stopped".  Meetings that ended
more than ``retention_days`` ago are purged at start and once a day.

Every timer (grace periods, heartbeats, purges) runs on ``clock``
(:mod:`sfu.clock`): the event loop's in production, a
:class:`~sfu.clock.ManualClock` in tests, which move time with ``advance`` and
then ``await service.wait_idle()`` for the writes it started.

Listeners (:meth:`MeetingService.add_listener`) get the frozen dataclasses of
:mod:`sfu.events`: ``MeetingStarted``, ``ParticipantJoined``, ``ParticipantLeft``
(with a :class:`~sfu.events.LeaveReason`, what the store records) and
``MeetingEnded`` (with an :class:`~sfu.events.EndReason`); they dispatch on the
event's type.

The running meetings live in the room registry ``MeetingService.rooms``
(:class:`sfu.rooms.Rooms`, the meeting side's one room model), which the
WebSocket protocol (sfu/signaling.py) shares for the rooms' participants.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import uuid
from dataclasses import dataclass
from typing import Callable

from . import audit
from .auth import AuthError, Claims
from .clock import Clock, Timer, as_clock
from .events import (EndReason, LeaveReason, MeetingEnded, MeetingEvent, MeetingStarted, ParticipantJoined,
                     ParticipantLeft)
from .history import DuplicateMeeting, HistoryStore, Meeting, SessionRecord
from .log import event
from .rooms import LiveMeeting, Rooms

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
class _LiveSession:
    session_id: str
    meeting_id: str
    room: str
    identity: str
    name: str


def may_host(claims: Claims, room: str) -> bool:
    """The token carries the host grant for ``room``, or is an admin's."""
    return claims.grants.admin or (claims.grants.host and claims.room == room)


def can_read_history(meeting: Meeting, claims: Claims) -> bool:
    """Only the meeting's creator (who had the host grant) or an admin may read who attended."""
    if claims.grants.admin:
        return True
    return bool(meeting.creator_identity) and claims.identity == meeting.creator_identity


def can_end(meeting: Meeting, claims: Claims) -> bool:
    """Host powers: an admin, or a token with the host grant for the meeting's room
    (or the creator's own identity with the host grant, e.g. a room-less REST token)."""
    if claims.grants.admin:
        return True
    if not claims.grants.host:
        return False
    return claims.room == meeting.room or (
        bool(meeting.creator_identity) and claims.identity == meeting.creator_identity)


class TooMany(Exception):
    """A per-identity limit on creating meetings was hit; ``retry_after`` in seconds."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class CreateLimiter:
    """Per identity: at most ``max_running`` running meetings it created, and at most
    ``per_minute`` creations a minute (a token bucket of that size, refilled evenly).
    0 turns a limit off.  Admins are not limited (a backend creating for others).
    Time is ``clock.now()`` (monotonic; :mod:`sfu.clock`)."""

    MAX_TRACKED = 10_000  # identities remembered; full buckets are forgotten first

    def __init__(self, max_running: int = 10, per_minute: float = 10.0, clock: Clock | None = None) -> None:
        self.max_running = max_running
        self.per_minute = per_minute
        self.clock = as_clock(clock)
        self._buckets: dict[str, tuple[float, float]] = {}  # identity -> (tokens, at)

    def check(self, claims: Claims, running: int) -> None:
        """Raise :class:`TooMany` or spend one creation of ``claims``' identity."""
        if claims.grants.admin:
            return
        if self.max_running and running >= self.max_running:
            raise TooMany(f"{running} running meetings created by you, the limit is {self.max_running}: "
                          "end one first", 60)
        if self.per_minute <= 0:
            return
        now = self.clock.now()
        rate = self.per_minute / 60.0
        tokens, at = self._buckets.get(claims.identity, (self.per_minute, now))
        tokens = min(self.per_minute, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[claims.identity] = (tokens, now)
            raise TooMany(f"more than {self.per_minute:g} meetings created per minute: slow down",
                          max(1, math.ceil((1.0 - tokens) / rate)))
        self._buckets[claims.identity] = (tokens - 1.0, now)
        if len(self._buckets) > self.MAX_TRACKED:
            self._forget(now, rate)

    def _forget(self, now: float, rate: float) -> None:
        for identity, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * rate >= self.per_minute:
                del self._buckets[identity]
        while len(self._buckets) > self.MAX_TRACKED:  # all busy: forget the oldest
            del self._buckets[next(iter(self._buckets))]


class MeetingService:
    def __init__(self, store: HistoryStore, grace_period: float = 30.0, heartbeat_interval: float = 10.0,
                 retention_days: float = 180.0, clock: Clock | Callable[[], float] | None = None,
                 audit_retention_days: float = 365.0) -> None:
        self.store = store
        self.grace_period = grace_period
        self.heartbeat_interval = heartbeat_interval
        self.retention_days = retention_days
        self.audit_retention_days = audit_retention_days  # the audit log's own (sfu/audit.py)
        # clock() is wall time (what the store records), clock.now() and call_later the timers';
        # a plain callable is wall time with the loop's timers (sfu.clock.as_clock)
        self.clock: Clock = as_clock(clock)
        self.rooms = Rooms()  # room -> its running meeting and participants (sfu/rooms.py)
        self._sessions: dict[str, _LiveSession] = {}
        self._listeners: list[Callable[[MeetingEvent], None]] = []
        self._lock = asyncio.Lock()
        self._timers: dict[str, Timer] = {}  # "heartbeat", "retention" -> the next one
        self._ending: set[asyncio.Task] = set()  # writes started by timers or sync code
        self._beating: asyncio.Task | None = None
        self._beat_again = False
        self.started = False

    # -- life cycle --------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        closed, ended = await self.store.recover()
        if closed or ended:
            event(logger, "history recovered after an unclean stop", logging.WARNING,
                  sessions_closed=closed, meetings_ended=ended)
        await self.purge_expired()
        self._every("heartbeat", self.heartbeat_interval, self._heartbeat_due)
        self._every("retention", RETENTION_CHECK_INTERVAL, self._retention_due)
        self.started = True

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self.wait_idle()
        for session_id in list(self._sessions):
            await self.leave(session_id, LeaveReason.SERVER_STOPPED, schedule_end=False)
        for live in self.rooms.running():
            await self._end(live, EndReason.SERVER_STOPPED)
        await self.store.close()
        self.started = False

    # -- queries -----------------------------------------------------------------------
    def active_meeting(self, room: str) -> Meeting | None:
        live = self.rooms.live(room)
        return live.meeting if live else None

    def session(self, session_id: str) -> _LiveSession | None:
        return self._sessions.get(session_id)

    def sessions_in(self, meeting_id: str) -> list[str]:
        live = self.rooms.live_by_id(meeting_id)
        return sorted(live.sessions) if live else []

    # -- commands ----------------------------------------------------------------------
    def running_created_by(self, identity: str) -> int:
        """How many running meetings ``identity`` is the creator of."""
        return sum(1 for live in self.rooms.running() if live.meeting.creator_identity == identity)

    async def create_meeting(self, room: str | None, topic: str, creator: Claims) -> Meeting:
        """See :meth:`create_or_claim`; the meeting only."""
        return (await self.create_or_claim(room, topic, creator))[0]

    async def create_or_claim(self, room: str | None, topic: str, creator: Claims,
                              check: Callable[[], None] | None = None) -> tuple[Meeting, bool]:
        """A new meeting in ``room`` (default: a room named after the meeting ID), and True.
        The caller has checked that ``creator`` may host ``room``.  If the room has a
        running meeting without a creator (started by a participant without the host
        grant), ``creator`` becomes its creator (and sets its topic, if given): that
        meeting and False.  Conflict if the room's running meeting has a creator.
        ``check`` runs under the lock before anything changes (the rate limit)."""
        async with self._lock:
            live = self.rooms.live(room) if room is not None else None
            if live is not None and live.meeting.creator_identity:
                raise Conflict(f"room {room} has a running meeting")
            if check is not None:
                check()
            if live is not None:
                await self._claim(live, creator, topic or None)
                return live.meeting, False
            live = await self._new_meeting(room, topic, creator)
            # nobody is in it yet: it ends like an emptied meeting unless someone joins
            self._schedule_end(live, max(self.grace_period, 3600.0))
            return live.meeting, True

    async def join(self, claims: Claims, room: str) -> tuple[Meeting, str]:
        """Record ``claims`` joining ``room``; durable before it returns."""
        async with self._lock:
            live = self.rooms.live(room)
            host = may_host(claims, room)
            if live is None:
                live = await self._new_meeting(room, "", claims if host else None)
            elif host and not live.meeting.creator_identity:
                await self._claim(live, claims, None)  # the first host in becomes the creator
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
        self._emit(ParticipantJoined(live.meeting.meeting_id, room, session_id, claims.identity, claims.name))
        return live.meeting, session_id

    async def leave(self, session_id: str, reason: LeaveReason | str = LeaveReason.LEFT,
                    schedule_end: bool = True) -> None:
        """Record a session's end; idempotent.  The last one out starts the grace period."""
        try:
            reason = LeaveReason(reason)
        except ValueError:
            event(logger, "unknown end reason recorded as left", logging.WARNING, reason=reason)
            reason = LeaveReason.LEFT
        info = self._sessions.pop(session_id, None)
        if info is None:
            return
        live = self.rooms.live_by_id(info.meeting_id)
        if live is not None:
            live.sessions.discard(session_id)
        try:
            await self.store.close_session(session_id, self.clock(), reason)
        finally:
            event(logger, "participant left", meeting=info.meeting_id, room=info.room,
                  session=session_id, identity=info.identity, reason=reason)
            self._emit(ParticipantLeft(info.meeting_id, info.room, session_id, info.identity, info.name, reason))
            if schedule_end and live is not None and not live.sessions and live.end_timer is None \
                    and self.rooms.live_by_id(info.meeting_id) is live:
                self._schedule_end(live, self.grace_period)

    def leave_later(self, session_id: str, reason: LeaveReason | str = LeaveReason.LEFT) -> None:
        """:meth:`leave` from synchronous code (an engine event); :meth:`stop` waits for it."""
        if session_id not in self._sessions:
            return
        self._spawn(self.leave(session_id, reason))

    async def wait_idle(self) -> None:
        """Until the writes started from timers or synchronous code (a leave, a meeting's
        end after its grace period, a heartbeat, a purge) are done, those they started too."""
        while self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        return task

    async def end_meeting(self, meeting_id: str, by: Claims) -> list[str]:
        """A host ends the meeting now; returns the session ids the caller must disconnect."""
        async with self._lock:
            live = self.rooms.live_by_id(meeting_id)
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
                await self.leave(session_id, LeaveReason.KICKED, schedule_end=False)
            await self._end(live, EndReason.ENDED_BY_HOST)
            return session_ids

    def add_listener(self, cb: Callable[[MeetingEvent], None]) -> None:
        self._listeners.append(cb)

    # -- internals ---------------------------------------------------------------------
    async def _new_meeting(self, room: str | None, topic: str, creator: Claims | None) -> LiveMeeting:
        """Insert a new meeting and start it in its room, which has none running (caller
        holds the lock); ``creator`` None: none yet."""
        for _attempt in range(20):
            meeting_id = new_meeting_id()
            if room is None and self.rooms.live(meeting_id) is not None:
                continue  # a room of that name has a running meeting
            meeting = Meeting(meeting_id, room or meeting_id, topic or "",
                              creator.identity if creator else "", creator.name if creator else "",
                              self.clock(), None)
            try:
                await self.store.create_meeting(meeting)
            except DuplicateMeeting:
                continue
            break
        else:  # pragma: no cover - 20 collisions in a 2**44 space
            raise RuntimeError("could not allocate a meeting id")
        live = self.rooms.start(meeting)
        event(logger, "meeting started", meeting=meeting.meeting_id, room=meeting.room,
              creator=creator.identity if creator else None)
        self._emit(MeetingStarted(meeting.meeting_id, meeting.room, meeting.topic))
        return live

    async def _claim(self, live: LiveMeeting, creator: Claims, topic: str | None) -> None:
        """``creator`` becomes the creator of a running meeting that has none (lock held)."""
        meeting = live.meeting
        await self.store.claim_meeting(meeting.meeting_id, creator.identity, creator.name, topic)
        meeting.creator_identity, meeting.creator_name = creator.identity, creator.name
        if topic is not None:
            meeting.topic = topic
        event(logger, "meeting creator set", meeting=meeting.meeting_id, room=meeting.room,
              creator=creator.identity)

    def _schedule_end(self, live: LiveMeeting, delay: float) -> None:
        def fire() -> None:
            live.end_timer = None
            if live.sessions or self.rooms.live_by_id(live.meeting.meeting_id) is not live:
                return
            self._spawn(self._end_if_empty(live))

        live.end_timer = self.clock.call_later(delay, fire)

    async def _end_if_empty(self, live: LiveMeeting) -> None:
        async with self._lock:
            if not live.sessions and self.rooms.live_by_id(live.meeting.meeting_id) is live:
                await self._end(live, EndReason.EMPTY)

    async def _end(self, live: LiveMeeting, why: EndReason) -> None:
        meeting = live.meeting
        if live.end_timer is not None:
            live.end_timer.cancel()
            live.end_timer = None
        self.rooms.end(live)
        meeting.ended_at = self.clock()
        try:
            await self.store.end_meeting(meeting.meeting_id, meeting.ended_at)
        except Exception:
            logger.exception("could not record the end of a meeting",
                             extra={"fields": {"meeting": meeting.meeting_id}})
        event(logger, "meeting ended", meeting=meeting.meeting_id, room=meeting.room, why=why)
        self._emit(MeetingEnded(meeting.meeting_id, meeting.room, why))

    def _emit(self, ev: MeetingEvent) -> None:
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
        audit_rows = await audit.purge(self.store, self.clock() - self.audit_retention_days * 86400.0)
        if audit_rows:
            event(logger, "audit log purged", rows=audit_rows, audit_retention_days=self.audit_retention_days)
        return count

    def _every(self, name: str, interval: float, callback: Callable[[], None]) -> None:
        """``callback`` every ``interval`` seconds of ``clock``, on time however long it takes."""

        def fire() -> None:
            self._every(name, interval, callback)
            callback()

        self._timers[name] = self.clock.call_later(interval, fire)

    def _heartbeat_due(self) -> None:
        if self._beating is not None and not self._beating.done():
            self._beat_again = True  # a slow store: one more write when this one is done
            return
        self._beating = self._spawn(self._heartbeats())

    async def _heartbeats(self) -> None:
        while True:
            self._beat_again = False
            try:
                await self.beat()
            except Exception:
                logger.exception("history heartbeat failed")
            if not self._beat_again:
                return

    def _retention_due(self) -> None:
        self._spawn(self._purge_logged())

    async def _purge_logged(self) -> None:
        try:
            await self.purge_expired()
        except Exception:
            logger.exception("history purge failed")


__all__ = ["Conflict", "CreateLimiter", "Meeting", "MeetingService", "NotFound", "TooMany", "can_end",
           "can_read_history", "may_host", "new_meeting_id"]

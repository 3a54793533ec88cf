"""The meeting life cycle (sfu/meetings.py) over the history store, both backends.

Grace periods, heartbeats and purges run on a ManualClock (sfu/clock.py): a test moves
time with ``clock.advance`` and awaits ``service.wait_idle()`` for the writes that started;
one test runs them on the real event loop clock."""

from __future__ import annotations

import asyncio

import pytest

from sfu.auth import AuthError, Claims, Grants
from sfu.clock import LoopClock, ManualClock
from sfu.events import EndReason, LeaveReason, MeetingEnded, MeetingStarted, ParticipantJoined, ParticipantLeft
from sfu.history import HistoryStore, Meeting, SessionRecord
from sfu.meetings import (ID_ALPHABET, RETENTION_CHECK_INTERVAL, Conflict, CreateLimiter, MeetingService,
                          NotFound, TooMany, can_end, can_read_history, new_meeting_id)

pytestmark = pytest.mark.timeout(60)
T0 = 1_800_000_000.0
GRACE = 30.0
HEARTBEAT = 10.0
DAY = 86400.0


def person(identity, room="r1", **grants) -> Claims:
    return Claims(identity, identity.title(), room, Grants(**grants), int(T0 + 3600))


@pytest.fixture
def clock():
    return ManualClock(wall=T0)


@pytest.fixture
async def service(history_db, tmp_path, clock):
    svc = MeetingService(HistoryStore.from_config(history_db, str(tmp_path)), grace_period=GRACE,
                         heartbeat_interval=HEARTBEAT, clock=clock)
    svc.events = []
    svc.add_listener(svc.events.append)
    await svc.start()
    yield svc
    if svc.started:
        await svc.stop()


async def until(predicate, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_meeting_ids_are_short_and_typeable():
    ids = {new_meeting_id() for _ in range(2000)}
    assert len(ids) == 2000
    for mid in list(ids)[:50]:
        groups = mid.split("-")
        assert [len(g) for g in groups] == [3, 3, 3]
        assert all(c in ID_ALPHABET for g in groups for c in g)
    assert not set("01ilo") & set(ID_ALPHABET)


async def test_first_join_creates_the_meeting_with_a_host_joiner_as_creator(service, clock):
    m, s1 = await service.join(person("alice", host=True), "r1")
    clock.advance(1)
    m2, s2 = await service.join(person("bob"), "r1")
    assert m is m2 and s1 != s2
    assert (m.room, m.creator_identity, m.creator_name, m.ended_at) == ("r1", "alice", "Alice", None)
    stored = await service.store.get_meeting(m.meeting_id)
    assert stored == Meeting(m.meeting_id, "r1", "", "alice", "Alice", m.started_at, None)
    rows = await service.store.sessions(m.meeting_id)  # durable when join returned
    assert [(r.session_id, r.identity, r.display_name, r.left_at) for r in rows] == [
        (s1, "alice", "Alice", None), (s2, "bob", "Bob", None)]
    assert service.events == [MeetingStarted(m.meeting_id, "r1", ""),
                              ParticipantJoined(m.meeting_id, "r1", s1, "alice", "Alice"),
                              ParticipantJoined(m.meeting_id, "r1", s2, "bob", "Bob")]
    assert service.active_meeting("r1") is m and service.sessions_in(m.meeting_id) == sorted([s1, s2])


async def test_concurrent_first_joins_make_one_meeting(service):
    results = await asyncio.gather(*(service.join(person(f"p{i}"), "busy") for i in range(8)))
    assert len({m.meeting_id for m, _ in results}) == 1
    assert len(await service.store.sessions(results[0][0].meeting_id)) == 8


async def advance(service, seconds):
    """Move the service's clock on, then let the writes its timers started finish."""
    service.clock.advance(seconds)  # the ManualClock of the fixture
    await service.wait_idle()


async def test_last_leave_ends_the_meeting_after_the_grace_period(service, clock):
    m, s1 = await service.join(person("alice"), "r1")
    _, s2 = await service.join(person("bob"), "r1")
    await advance(service, 5)
    await service.leave(s1, "left")
    await service.leave(s1, "left")  # idempotent
    await advance(service, 5)
    await service.leave(s2, "timed out")
    await advance(service, GRACE - 0.5)
    assert service.active_meeting("r1") is m, "still in its grace period"
    await advance(service, 0.5)
    assert service.active_meeting("r1") is None
    stored = await service.store.get_meeting(m.meeting_id)
    rows = {r.session_id: r for r in await service.store.sessions(m.meeting_id)}
    assert (rows[s1].left_at, rows[s1].end_reason) == (T0 + 5, "left")
    assert (rows[s2].left_at, rows[s2].end_reason) == (T0 + 10, "timed out")
    assert stored.ended_at == T0 + 10 + GRACE
    assert service.events[-1] == MeetingEnded(m.meeting_id, "r1", EndReason.EMPTY)
    left = [e for e in service.events if isinstance(e, ParticipantLeft)]
    assert left == [ParticipantLeft(m.meeting_id, "r1", s1, "alice", "Alice", LeaveReason.LEFT),
                    ParticipantLeft(m.meeting_id, "r1", s2, "bob", "Bob", LeaveReason.TIMED_OUT)]
    assert left[1].reason is LeaveReason.TIMED_OUT and left[1].reason == "timed out"  # the stored string
    assert len(service.rooms) == 0, "the ended meeting's room is out of the registry"


async def test_rejoin_in_the_grace_period_keeps_the_meeting_with_a_new_session(service, clock):
    m, s1 = await service.join(person("alice"), "r1")
    await service.leave(s1)
    await advance(service, GRACE - 1)
    m2, s2 = await service.join(person("alice"), "r1")
    assert m2 is m and s2 != s1
    assert clock.pending() == [HEARTBEAT * 3, RETENTION_CHECK_INTERVAL], "the end timer is cancelled"
    await advance(service, GRACE * 3)
    assert service.active_meeting("r1") is m
    rows = await service.store.sessions(m.meeting_id)
    assert [(r.session_id, r.end_reason) for r in rows] == [(s1, "left"), (s2, None)]
    # after the meeting ends, the next join starts a new meeting
    await service.leave(s2)
    await advance(service, GRACE)
    assert service.active_meeting("r1") is None
    m3, _ = await service.join(person("bob", host=True), "r1")
    assert m3.meeting_id != m.meeting_id and m3.creator_identity == "bob"


async def test_host_ends_the_meeting_and_everyone_is_kicked(service):
    m, s1 = await service.join(person("alice"), "r1")
    _, s2 = await service.join(person("bob"), "r1")
    _, s3 = await service.join(person("carol", host=True), "r1")
    with pytest.raises(AuthError) as err:
        await service.end_meeting(m.meeting_id, person("bob"))
    assert err.value.status == 403
    with pytest.raises(AuthError):  # host of another room
        await service.end_meeting(m.meeting_id, person("dan", room="r2", host=True))
    with pytest.raises(NotFound):
        await service.end_meeting("zzz-zzz-zzz", person("carol", host=True))
    kicked = await service.end_meeting(m.meeting_id, person("carol", host=True))
    assert kicked == sorted([s1, s2, s3])
    assert service.active_meeting("r1") is None
    rows = await service.store.sessions(m.meeting_id)
    assert {r.end_reason for r in rows} == {"kicked"}
    assert (await service.store.get_meeting(m.meeting_id)).ended_at is not None
    assert await service.end_meeting(m.meeting_id, person("carol", host=True)) == []  # ended already
    with pytest.raises(AuthError):  # ended or not, only a host may
        await service.end_meeting(m.meeting_id, person("alice"))


@pytest.mark.parametrize("who", [person("alice", room=None, host=True), person("root", room=None, admin=True),
                                 person("hank", room="r1", host=True)])
async def test_creator_with_the_host_grant_host_of_the_room_or_admin_may_end(service, who):
    m = await service.create_meeting("r1", "", person("alice", room=None, host=True))
    await service.join(person("bob"), "r1")
    await service.end_meeting(m.meeting_id, who)
    assert service.active_meeting("r1") is None


@pytest.mark.parametrize("who", [person("alice", room=None), person("alice", room="r1", publish=True),
                                 person("bob", room="r1", subscribe=True), person("hank", room="r2", host=True)])
async def test_no_host_grant_no_host_powers_even_for_the_creator(service, who):
    m = await service.create_meeting("r1", "", person("alice", room=None, host=True))
    await service.join(person("bob"), "r1")
    assert not can_end(m, who)
    with pytest.raises(AuthError) as err:
        await service.end_meeting(m.meeting_id, who)
    assert err.value.status == 403
    assert service.active_meeting("r1") is m


async def test_a_join_without_the_host_grant_starts_a_meeting_without_creator(service):
    """A viewer coming first does not become creator (no squatting): the first host in does."""
    m, _ = await service.join(person("vic", subscribe=True), "r1")
    assert (m.creator_identity, m.creator_name) == ("", "")
    assert (await service.store.get_meeting(m.meeting_id)).creator_identity == ""
    assert not can_read_history(m, person("vic", subscribe=True))
    assert not can_read_history(m, person("", room="r1"))  # no identity ever matches "no creator"
    await service.join(person("pat", publish=True), "r1")
    assert m.creator_identity == ""
    joined, _ = await service.join(person("hope", host=True), "r1")
    assert joined is m and (m.creator_identity, m.creator_name) == ("hope", "Hope")
    stored = await service.store.get_meeting(m.meeting_id)
    assert (stored.creator_identity, stored.creator_name) == ("hope", "Hope")
    await service.join(person("hal", host=True), "r1")  # the first host stays the creator
    assert m.creator_identity == "hope"
    assert [m.meeting_id for m in await service.store.list_meetings("hope")] == [m.meeting_id]


async def test_a_host_claims_the_running_meeting_a_viewer_started(service):
    m, _ = await service.join(person("vic", subscribe=True), "r1")
    claimed, created = await service.create_or_claim("r1", "Standup", person("hope", host=True))
    assert claimed is m and created is False
    assert (m.creator_identity, m.topic) == ("hope", "Standup")
    stored = await service.store.get_meeting(m.meeting_id)
    assert (stored.creator_identity, stored.creator_name, stored.topic) == ("hope", "Hope", "Standup")
    with pytest.raises(Conflict):  # it has a creator now
        await service.create_or_claim("r1", "again", person("hal", host=True))
    assert m.creator_identity == "hope"


def test_create_limiter_caps_running_meetings_and_the_rate_per_identity():
    clock = ManualClock(start=1000.0)
    limiter = CreateLimiter(max_running=3, per_minute=6, clock=clock)
    alice, bob = person("alice", host=True), person("bob", host=True)
    with pytest.raises(TooMany) as err:
        limiter.check(alice, running=3)
    assert err.value.retry_after > 0 and "limit is 3" in str(err.value)
    for _ in range(6):  # a burst of the per-minute rate
        limiter.check(alice, running=0)
    with pytest.raises(TooMany) as err:
        limiter.check(alice, running=0)
    assert err.value.retry_after == 10 and "per minute" in str(err.value)  # 6/min: one every 10 s
    limiter.check(bob, running=0)  # per identity
    clock.advance(10.0)
    limiter.check(alice, running=0)
    with pytest.raises(TooMany):
        limiter.check(alice, running=0)
    for _ in range(100):  # admins (a backend creating for others) are not limited
        limiter.check(person("root", room=None, admin=True), running=1000)
    unlimited = CreateLimiter(max_running=0, per_minute=0)
    for _ in range(100):
        unlimited.check(alice, running=1000)


def test_create_limiter_memory_is_bounded():
    clock = ManualClock()
    limiter = CreateLimiter(max_running=0, per_minute=10, clock=clock)
    limiter.MAX_TRACKED = 50
    for i in range(500):
        limiter.check(person(f"p{i}", host=True), running=0)
        clock.advance(0.01)
    assert len(limiter._buckets) <= 51


async def test_created_meeting_is_joined_and_keeps_its_creator(service):
    m = await service.create_meeting(None, "Standup", person("alice", room=None))
    assert m.room == m.meeting_id and m.topic == "Standup"
    with pytest.raises(Conflict):
        await service.create_meeting(m.room, "again", person("bob"))
    joined, _ = await service.join(person("bob", room=m.room), m.room)
    assert joined is m and joined.creator_identity == "alice"


async def test_stop_closes_open_sessions_as_server_stopped(service):
    m, s1 = await service.join(person("alice"), "r1")
    await service.stop()
    store = service.store
    await store.open()
    try:
        assert [(r.session_id, r.end_reason) for r in await store.sessions(m.meeting_id)] == [
            (s1, "server stopped")]
        assert (await store.get_meeting(m.meeting_id)).ended_at is not None
    finally:
        await store.close()


async def test_leave_later_from_synchronous_code_is_awaited_by_stop(service):
    m, s1 = await service.join(person("alice"), "r1")
    service.leave_later(s1, "timed out")
    service.leave_later("unknown-session", "left")
    await service.stop()
    await service.store.open()
    try:
        assert [r.end_reason for r in await service.store.sessions(m.meeting_id)] == ["timed out"]
    finally:
        await service.store.close()


async def last_heartbeat(store, meeting_id):
    return [r.last_heartbeat for r in await store.sessions(meeting_id)]


async def test_heartbeat_then_crash_then_recovery(history_db, tmp_path):
    clock = ManualClock(wall=T0)
    svc = MeetingService(HistoryStore.from_config(history_db, str(tmp_path)), grace_period=GRACE,
                         heartbeat_interval=HEARTBEAT, clock=clock)
    await svc.start()
    clock.advance(4)
    m, s1 = await svc.join(person("alice"), "r1")
    assert await last_heartbeat(svc.store, m.meeting_id) == [T0 + 4]
    for beat in (1, 2, 3):  # on the interval's grid, whenever the session joined
        clock.advance(HEARTBEAT * beat - clock.now())
        await svc.wait_idle()
        assert await last_heartbeat(svc.store, m.meeting_id) == [T0 + HEARTBEAT * beat]
    clock.advance(HEARTBEAT - 0.5)
    await svc.wait_idle()
    assert await last_heartbeat(svc.store, m.meeting_id) == [T0 + 3 * HEARTBEAT]
    # crash: no stop(); the store goes, the service's timers never run again
    await svc.store.close()
    later = ManualClock(wall=T0 + 1000)
    svc2 = MeetingService(HistoryStore.from_config(history_db, str(tmp_path)), clock=later)
    await svc2.start()
    try:
        rows = await svc2.store.sessions(m.meeting_id)
        assert rows[0].end_reason == "server stopped"
        assert rows[0].left_at == T0 + 3 * HEARTBEAT, "closed at its last heartbeat, not at restart"
        assert (await svc2.store.get_meeting(m.meeting_id)).ended_at == rows[0].left_at
        assert svc2.active_meeting("r1") is None
    finally:
        await svc2.stop()


async def test_a_slow_heartbeat_is_not_overtaken_and_the_next_one_is_written(service, clock):
    """Heartbeats do not pile up behind a slow store: those due during a write make one more."""
    m, s1 = await service.join(person("alice"), "r1")
    writes = []
    heartbeat = service.store.heartbeat

    async def slow(session_ids, at):
        writes.append(at)
        if len(writes) == 1:
            clock.advance(HEARTBEAT * 3)  # three more fall due while this write is under way
        await heartbeat(session_ids, at)

    service.store.heartbeat = slow
    clock.advance(HEARTBEAT)
    await service.wait_idle()
    assert writes == [T0 + HEARTBEAT, T0 + 4 * HEARTBEAT]
    assert await last_heartbeat(service.store, m.meeting_id) == [T0 + 4 * HEARTBEAT]
    clock.advance(HEARTBEAT * 2)  # two due before a write starts: one write, at the latest time
    await service.wait_idle()
    assert writes[2:] == [T0 + 6 * HEARTBEAT]


async def test_a_created_meeting_nobody_joins_ends_after_an_hour(service, clock):
    m = await service.create_meeting(None, "Standup", person("alice", room=None, host=True))
    await advance(service, 3600 - 1)
    assert service.active_meeting(m.room) is m
    await advance(service, 1)
    assert service.active_meeting(m.room) is None
    assert (await service.store.get_meeting(m.meeting_id)).ended_at == T0 + 3600
    assert service.events[-1].reason is EndReason.EMPTY


async def test_real_clock_grace_period_and_heartbeats(history_db, tmp_path):
    """The production clock (the event loop's timers), with short periods."""
    svc = MeetingService(HistoryStore.from_config(history_db, str(tmp_path)), grace_period=0.05,
                         heartbeat_interval=0.02)
    assert isinstance(svc.clock, LoopClock)
    await svc.start()
    try:
        m, s1 = await svc.join(person("alice"), "r1")
        joined = (await last_heartbeat(svc.store, m.meeting_id))[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (await last_heartbeat(svc.store, m.meeting_id))[0] == joined:
            assert loop.time() < deadline, "no heartbeat"
            await asyncio.sleep(0.01)
        await svc.leave(s1)
        assert svc.active_meeting("r1") is m
        await until(lambda: svc.active_meeting("r1") is None)
        assert (await svc.store.get_meeting(m.meeting_id)).ended_at >= m.started_at
    finally:
        await svc.stop()


async def test_retention_purge_once_a_day(service, clock):
    m, s1 = await service.join(person("alice"), "r1")
    await service.leave(s1)
    await advance(service, GRACE)
    assert (await service.store.get_meeting(m.meeting_id)).ended_at == T0 + GRACE
    service.retention_days = 2
    await advance(service, 2 * DAY - 1)  # the first daily check: ended 2 days - 31 s ago
    assert await service.store.get_meeting(m.meeting_id) is not None
    await advance(service, DAY)  # the second
    assert await service.store.get_meeting(m.meeting_id) is None
    assert await service.store.sessions(m.meeting_id) == []


async def test_retention_purge_at_start(history_db, tmp_path):
    store = HistoryStore.from_config(history_db, str(tmp_path))
    await store.open()
    day = 86400.0
    await store.create_meeting(Meeting("old-old-old", "r", "", "a", "A", T0 - 200 * day, T0 - 181 * day))
    await store.add_session(SessionRecord("s", "old-old-old", "a", "A", T0 - 200 * day,
                                          T0 - 181 * day, T0 - 181 * day, "left"))
    await store.create_meeting(Meeting("new-new-new", "r", "", "a", "A", T0 - 100 * day, T0 - 99 * day))
    await store.close()
    svc = MeetingService(HistoryStore.from_config(history_db, str(tmp_path)), retention_days=180,
                         clock=lambda: T0)
    await svc.start()
    try:
        assert await svc.store.get_meeting("old-old-old") is None
        assert await svc.store.sessions("old-old-old") == []
        assert await svc.store.get_meeting("new-new-new") is not None
    finally:
        await svc.stop()


async def test_a_failing_listener_does_not_break_the_service(service):
    def broken(_ev):
        raise RuntimeError("boom")

    service.add_listener(broken)
    m, s = await service.join(person("alice"), "r1")
    await service.leave(s)
    assert isinstance(service.events[-1], ParticipantLeft)


async def test_unknown_leave_reason_is_recorded_as_left(service):
    m, s1 = await service.join(person("alice"), "r1")
    await service.leave(s1, "exploded")
    assert [r.end_reason for r in await service.store.sessions(m.meeting_id)] == ["left"]

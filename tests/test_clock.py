"""sfu/clock.py: the manual clock tests drive, and the protocol timers that run on it."""

from __future__ import annotations

import asyncio

import pytest

from sfu.clock import LoopClock, ManualClock, as_clock
from sfu.config import Config
from sfu.events import LeaveReason, ParticipantLeft
from sfu.signaling import CLOSE_KICKED, KICK_GRACE, Signaling

from .conftest import new_engine
from .test_signaling import FakeMeetings, joined

pytestmark = pytest.mark.timeout(30)


def test_manual_clock_runs_due_callbacks_in_order_each_at_its_time():
    clock = ManualClock(start=100.0, wall=5000.0)
    ran = []
    clock.call_later(3, lambda: ran.append(("c", clock.now(), clock())))
    clock.call_at(101, lambda: ran.append(("a", clock.now(), clock())))
    clock.call_at(101, lambda: ran.append(("b", clock.now(), clock())))  # same time: in order
    cancelled = clock.call_later(2, ran.append, "never")
    cancelled.cancel()

    def chained():  # scheduled inside the window: runs in this advance too
        ran.append(("d", clock.now()))
        clock.call_later(0.5, lambda: ran.append(("e", clock.now())))

    clock.call_later(3.5, chained)
    clock.call_later(10, ran.append, "later")
    assert clock.advance(0.5) == 0 and ran == []
    assert clock.advance(3.5) == 5
    assert ran == [("a", 101.0, 5001.0), ("b", 101.0, 5001.0), ("c", 103.0, 5003.0), ("d", 103.5),
                   ("e", 104.0)]
    assert clock.now() == 104.0 and clock() == 5004.0
    assert clock.pending() == [110.0]
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert clock.advance(6) == 1 and ran[-1] == "later" and clock.pending() == []


async def test_loop_clock_is_the_loop_time_and_wall_time():
    clock = as_clock(None)
    assert isinstance(clock, LoopClock)
    loop = asyncio.get_running_loop()
    assert abs(clock.now() - loop.time()) < 1.0
    fired = loop.create_future()
    clock.call_later(0.01, fired.set_result, "done")
    assert await asyncio.wait_for(fired, 5) == "done"
    wall = as_clock(lambda: 42.0)  # a plain wall-time callable keeps the loop's timers
    assert wall() == 42.0 and isinstance(wall, LoopClock)
    manual = ManualClock()
    assert as_clock(manual) is manual


async def test_a_kicked_session_without_meeting_end_is_closed_after_the_kick_grace():
    """The protocol timer runs on the signaling's clock: no sleeping KICK_GRACE."""
    clock = ManualClock(wall=1234.5)
    meetings = FakeMeetings()
    signaling = Signaling(new_engine(Config(), "pure"), meetings, clock=clock)
    alice = await joined(signaling, "a", "Alice")
    bob = await joined(signaling, "b", "Bob")
    # the history closed Bob's session as kicked, but no meeting_ended follows
    meetings.emit(ParticipantLeft(bob.participant.meeting_id, "r", bob.participant.session_id, "b", "Bob",
                                  LeaveReason.KICKED))
    clock.advance(KICK_GRACE - 0.5)
    assert bob.events("kicked") == [] and bob.closed is None
    clock.advance(0.5)
    assert len(bob.events("kicked")) == 1 and bob.closed == (CLOSE_KICKED, "removed from the meeting")
    await asyncio.sleep(0)  # the disconnect runs as a task
    assert bob.participant.gone and not alice.participant.gone and alice.closed is None
    pong = await alice.request("ping")
    assert pong["time"] == 1234.5 + KICK_GRACE


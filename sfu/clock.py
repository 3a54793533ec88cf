"""The one source of "now" for the control plane's timers, and a clock tests move by hand.

A clock answers two questions and schedules callbacks:

- ``clock()``: wall time, seconds since the epoch: what records store (a meeting's start,
  a heartbeat, the ``pong`` time);
- ``clock.now()``: monotonic seconds, what timers and rate limits measure;
- ``clock.call_at(when, cb, *args)`` / ``clock.call_later(delay, cb, *args)``: run ``cb``
  at ``now() == when`` (or ``delay`` from now); the handle has ``cancel()``.

:class:`LoopClock` is the server's: the running event loop's ``time()`` and ``call_at``.
:class:`ManualClock` is the tests': time stands still until :meth:`ManualClock.advance`,
which runs the callbacks that fall due, in order, each at its own time.  Code that only
used a wall-clock callable (``clock=time.time``) keeps working: :func:`as_clock` wraps it.

The media hot path keeps its own clock (the engine's ``tick(now)``); this one is for the
meeting service's grace periods, heartbeats and retention purges, the create-rate limit and
the signaling protocol's timers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Any, Callable, Protocol

__all__ = ["Clock", "LoopClock", "ManualClock", "Timer", "as_clock"]


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def __call__(self) -> float: ...

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer: ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer: ...


class LoopClock:
    """Production: timers on the running loop (``loop.call_at``, ``loop.time()``), wall
    time from ``wall`` (``time.time``)."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall

    def __call__(self) -> float:
        return self._wall()

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # outside a loop (a CLI, a synchronous test)
            return time.monotonic()

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_at(when, callback, *args)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback, *args)


class ManualTimer:
    """A callback scheduled on a :class:`ManualClock`."""

    __slots__ = ("when", "_callback", "_args", "_cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple) -> None:
        self.when = when
        self._callback = callback
        self._args = args
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        self._callback, self._args = None, ()  # type: ignore[assignment]

    def cancelled(self) -> bool:
        return self._cancelled


class ManualClock:
    """Tests: time moves only by :meth:`advance`.  ``now()`` starts at ``start``; wall
    time is ``wall`` then and moves with it.  Callbacks run synchronously inside
    :meth:`advance` (so in the test's own task: what they start with ``create_task``
    runs when the test next awaits)."""

    def __init__(self, start: float = 0.0, wall: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._heap: list[tuple[float, int, ManualTimer]] = []
        self._seq = itertools.count()  # same time: first scheduled, first run

    def __call__(self) -> float:
        return self._wall_offset + self._now

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> ManualTimer:
        timer = ManualTimer(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> ManualTimer:
        return self.call_at(self._now + max(0.0, delay), callback, *args)

    def pending(self) -> list[float]:
        """When the timers not yet run nor cancelled are due, earliest first."""
        return sorted(when for when, _, timer in self._heap if not timer.cancelled())

    def advance(self, seconds: float) -> int:
        """Move time on by ``seconds``, running every callback due by then, in order of
        due time, with ``now()`` at its due time while it runs (a callback that schedules
        another inside the window sees it run too).  Returns how many ran.  An exception
        from a callback propagates (a test should see it)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        target = self._now + seconds
        ran = 0
        while self._heap and self._heap[0][0] <= target:
            when, _, timer = heapq.heappop(self._heap)
            if timer.cancelled():
                continue
            self._now = max(self._now, when)
            callback, args = timer._callback, timer._args
            timer.cancel()  # run once; cancel() afterwards is a no-op
            callback(*args)
            ran += 1
        self._now = target
        return ran


def as_clock(clock: Clock | Callable[[], float] | None) -> Clock:
    """``clock`` if it schedules; a plain wall-time callable gets the loop's timers."""
    if clock is None:
        return LoopClock()
    if hasattr(clock, "call_at") and hasattr(clock, "now"):
        return clock  # type: ignore[return-value]
    return LoopClock(wall=clock)

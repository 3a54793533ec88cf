"""Polling with a deadline, for tests that wait on real clients and servers."""

from __future__ import annotations

import asyncio
import time
from typing import Callable


async def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """True as soon as ``predicate()`` is true; its last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())

"""Injectable time: a monotonic clock and an async sleep, plus a fake pair for tests.

Everything that waits or measures time (health ejections, retry back-off, polling) takes a
`Clock` and a `Sleep` instead of calling `time` and `asyncio` directly, so tests and
benchmarks drive time by hand and never really sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "Sleep", "system_sleep"]

Clock = Callable[[], float]
"""Returns monotonic seconds. Only differences between two readings mean anything."""

Sleep = Callable[[float], Awaitable[None]]
"""Waits the given number of seconds."""

SYSTEM_CLOCK: Clock = time.monotonic


async def system_sleep(seconds: float) -> None:
    """Really wait (`asyncio.sleep`); negative durations wait zero."""
    await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when told to, and a sleep that moves it instantly.

    Use the instance itself as the `Clock` and its `sleep` method as the `Sleep`.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        """The current fake time (same as calling the clock)."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward. Moving it backwards would break every monotonic reader."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the request, advance time by it, then let other tasks run once.

        Yielding to the loop keeps the ordering of real code: tasks waiting on the sleeper
        get a turn, as they would during a real sleep.
        """
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now})"

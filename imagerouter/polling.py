"""When to poll a running job.

A schedule answers one question: how long to wait before poll number `polls` (0 = the first)
of a job that has been running `elapsed` seconds. Schedules are small objects so the router can
swap them (tenacity-style) and tests can check them as pure functions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["FixedSchedule", "PollSchedule"]


class PollSchedule(Protocol):
    def delay(self, polls: int, elapsed: float) -> float:
        """Seconds to wait before the next poll."""
        ...


@dataclass
class FixedSchedule:
    """Poll every `interval` seconds (the providers' SDK default is 2 s), with a little jitter
    so many jobs started together do not poll in lockstep. The first poll comes after
    `first` seconds (the interval when not given)."""

    interval: float = 2.0
    jitter: float = 0.1
    first: float | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, polls: int, elapsed: float) -> float:
        base = self.first if polls == 0 and self.first is not None else self.interval
        if self.jitter <= 0:
            return base
        return max(0.0, base * (1 + self.rng.uniform(-self.jitter, self.jitter)))

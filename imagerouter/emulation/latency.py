"""How long an emulated job runs: a tiny latency model parsed from a short text spec."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["LatencyModel"]

# z-score of the 95th percentile of a standard normal: turns (p50, p95) into lognormal sigma.
_Z95 = 1.6448536269514722

LatencyKind = Literal["fixed", "uniform", "lognormal"]


@dataclass(frozen=True)
class LatencyModel:
    """How long an emulated job runs before it finishes (seconds).

    `fixed`: always `a`; `uniform`: between `a` (low) and `b` (high); `lognormal`: median `a`
    and 95th percentile `b`, which is how provider latencies are usually reported.
    """

    kind: LatencyKind
    a: float
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise ValueError(
                f"latency kind {self.kind!r} is unknown; use fixed, uniform or lognormal"
            )
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise ValueError("latency values must be finite numbers")
        if self.a < 0 or self.b < 0:
            raise ValueError(f"latency values must not be negative (got {self.a}, {self.b})")
        if self.kind == "uniform" and self.b < self.a:
            raise ValueError(f"uniform latency needs low <= high (got {self.a}, {self.b})")
        if self.kind == "lognormal" and not (0 < self.a <= self.b):
            raise ValueError(
                f"lognormal latency needs 0 < p50 <= p95 (got p50={self.a}, p95={self.b})"
            )

    @classmethod
    def parse(cls, text: str) -> LatencyModel:
        """Read `"0.05"`, `"fixed:0.05"`, `"uniform:0.01,0.05"` or `"lognormal:4,30"`."""
        spec = text.strip()
        kind, sep, rest = spec.partition(":")
        if not sep:
            kind, rest = "fixed", spec
        kind = kind.strip().lower()
        try:
            values = [float(part) for part in rest.split(",")]
        except ValueError:
            raise ValueError(
                f"latency {text!r}: expected numbers, e.g. '0.05', 'uniform:0.01,0.05' "
                "or 'lognormal:4,30'"
            ) from None
        kinds: dict[str, LatencyKind] = {
            "fixed": "fixed",
            "uniform": "uniform",
            "lognormal": "lognormal",
        }
        if kind not in kinds:
            raise ValueError(
                f"latency {text!r}: unknown kind {kind!r}; use fixed, uniform or lognormal"
            )
        wanted = 1 if kind == "fixed" else 2
        if len(values) != wanted:
            raise ValueError(f"latency {text!r}: {kind} takes {wanted} number(s)")
        return cls(kinds[kind], values[0], values[1] if wanted == 2 else 0.0)

    def sample(self, rng: random.Random) -> float:
        """One duration in seconds."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        mu = math.log(self.a)
        sigma = (math.log(self.b) - mu) / _Z95
        return rng.lognormvariate(mu, sigma)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        return f"{self.kind}:{self.a:g},{self.b:g}"

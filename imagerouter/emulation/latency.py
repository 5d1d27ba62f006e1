"""How long an emulated job runs: a tiny latency model parsed from a short text spec."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from .errors import EmulationSpecError

__all__ = ["LatencyModel"]

# z-score of the 95th percentile of a standard normal: turns (p50, p95) into lognormal sigma.
_Z95 = 1.6448536269514722

LatencyKind = Literal["fixed", "uniform", "lognormal"]


def _error(message: str) -> EmulationSpecError:
    return EmulationSpecError("latency", message)


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
            raise _error(f"kind {self.kind!r} is unknown; use fixed, uniform or lognormal")
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise _error("values must be finite numbers")
        if self.a < 0 or self.b < 0:
            raise _error(f"values must not be negative (got {self.a:g}, {self.b:g})")
        if self.kind == "uniform" and self.b < self.a:
            raise _error(f"uniform needs low <= high (got {self.a:g}, {self.b:g})")
        if self.kind == "lognormal" and not (0 < self.a <= self.b):
            raise _error(f"lognormal needs 0 < p50 <= p95 (got p50={self.a:g}, p95={self.b:g})")

    @classmethod
    def parse(cls, text: str) -> LatencyModel:
        """Read `"0.05"`, `"fixed:0.05"`, `"uniform:0.01,0.05"` or `"lognormal:4,30"`."""
        spec = text.strip()
        kind, sep, rest = spec.partition(":")
        if not sep:
            kind, rest = "fixed", spec
        kind = kind.strip().lower()
        kinds: dict[str, LatencyKind] = {
            "fixed": "fixed",
            "uniform": "uniform",
            "lognormal": "lognormal",
        }
        if kind not in kinds:
            raise _error(f"{text!r}: unknown kind {kind!r}; use fixed, uniform or lognormal")
        try:
            values = [float(part) for part in rest.split(",")]
        except ValueError:
            raise _error(
                f"{text!r}: expected numbers (seconds), e.g. '0.05', 'uniform:0.01,0.05' "
                "or 'lognormal:4,30'"
            ) from None
        wanted = 1 if kind == "fixed" else 2
        if len(values) != wanted:
            raise _error(f"{text!r}: {kind} takes {wanted} number(s)")
        try:
            return cls(kinds[kind], values[0], values[1] if wanted == 2 else 0.0)
        except EmulationSpecError as exc:
            raise _error(f"{text!r}: {exc.detail}") from None

    @property
    def upper_s(self) -> float:
        """A duration few jobs exceed: the fixed value, the uniform high end, the lognormal
        p95. Emulated runs size their poll deadline from it."""
        return self.a if self.kind == "fixed" else self.b

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

"""When to poll a running job.

A schedule answers one question: how long to wait before poll number `polls` (0 = the first)
of a job that has been running `elapsed` seconds. Schedules are small objects so the router can
swap them (tenacity-style) and tests can check them as pure functions.

Two schedules:

- `FixedSchedule`: every `interval` seconds (the providers' SDKs poll every 2 s).
- `AdaptiveSchedule`: learned per backend from how long its recent jobs took (the ledger's
  `latencies()`), or from the providers' documented latencies when there is no history. It
  waits until shortly before the job is likely to finish, polls densely while completions are
  likely, then backs off. The poll times follow Keller's optimal checking schedule: for a cost
  of `poll_cost_s` seconds of detection delay per poll, the best poll density at time t is
  `sqrt(hazard(t) / (2 * poll_cost_s))`, where hazard(t) is the chance per second that a job
  still running at t finishes now. Gaps never go below the provider's minimum interval
  (`floor`, see `PROVIDER_FLOORS`) and every wait gets a little jitter.

`AdaptiveSchedules` builds them per (provider, model, operation) and caches the plan, so a
schedule per task costs a dict lookup. benchmarks/bench_polling.py measures both schedules.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "DEFAULT_FLOOR_S",
    "DEFAULT_POLL_BUDGET",
    "DEFAULT_POLL_COST_S",
    "PRIORS",
    "PROVIDER_FLOORS",
    "AdaptiveSchedule",
    "AdaptiveSchedules",
    "DurationModel",
    "FixedSchedule",
    "PollSchedule",
    "expected_polls",
    "fixed_expected_polls",
    "plan_polls",
    "tune_poll_cost",
]

log = logging.getLogger("imagerouter.polling")

_Z95 = 1.6448536269514722  # the 95th percentile of a standard normal
_SQRT2 = math.sqrt(2.0)

# No provider we ship documents a minimum polling interval; their SDKs poll every 2 s (a
# default, not a limit) and they rate-limit with 429. 0.5 s is a floor we take as safe: the
# adaptive schedule reaches it only for a few polls around a job's likely finish and spends
# fewer polls per job than the 2 s loop, so the average request rate per job stays below
# what the providers recommend. A provider with a documented minimum declares it as
# `Provider.poll_floor_s`; the router passes those here (PROVIDER_FLOORS stays empty).
DEFAULT_FLOOR_S = 0.5
PROVIDER_FLOORS: Mapping[str, float] = {}

# How many polls the adaptive schedule may spend per job, as a fraction of what a 2 s loop
# spends on the same latency distribution; the schedule then places them where they cut the
# detection delay most. benchmarks/bench_polling.py prints the whole trade-off curve.
DEFAULT_POLL_BUDGET = 1.0
REFERENCE_INTERVAL_S = 2.0
DEFAULT_POLL_COST_S = 0.15  # plan_polls' default when called directly
DEFAULT_MAX_GAP_S = 10.0
_PRIOR_WEIGHT = 4.0  # the prior counts as this many observed jobs
_MIN_SIGMA = 0.08  # durations are never perfectly regular; keeps the plan from collapsing
_HISTORY = 100  # newest jobs a fit uses
_STEPS = 400  # integration steps of the poll density, in log time
_TUNE_STEPS = 16  # bisection steps when fitting the poll cost to a budget


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


@dataclass(frozen=True)
class DurationModel:
    """Job durations as a lognormal: `mu` and `sigma` of the natural log of seconds.

    Providers report latency as p50/p95, which is exactly a lognormal's two parameters.
    """

    mu: float
    sigma: float

    @classmethod
    def from_quantiles(cls, p50: float, p95: float) -> DurationModel:
        if not 0 < p50 <= p95:
            raise ValueError(f"need 0 < p50 <= p95 (got p50={p50}, p95={p95})")
        return cls(math.log(p50), max(_MIN_SIGMA, (math.log(p95) - math.log(p50)) / _Z95))

    @classmethod
    def fit(
        cls, durations: Iterable[float], *, prior: DurationModel, weight: float = _PRIOR_WEIGHT
    ) -> DurationModel:
        """The prior updated with observed durations (seconds). Robust to a few outliers
        (a job collected late by `resume`): median and interquartile range of the logs."""
        logs = sorted(math.log(d) for d in durations if math.isfinite(d) and d > 0)
        n = len(logs)
        if n == 0:
            return prior
        mu = statistics.median(logs)
        if n >= 4:
            q1, _, q3 = statistics.quantiles(logs, n=4, method="inclusive")
            sigma = (q3 - q1) / 1.3489795  # the IQR of a standard normal
        else:
            sigma = prior.sigma
        total = weight + n
        mu = (weight * prior.mu + n * mu) / total
        variance = (weight * prior.sigma**2 + n * sigma**2) / total
        return cls(mu, max(_MIN_SIGMA, math.sqrt(variance)))

    @property
    def median(self) -> float:
        return math.exp(self.mu)

    def quantile(self, p: float) -> float:
        """Seconds by which a fraction `p` (0 < p < 1) of jobs have finished."""
        return math.exp(self.mu + self.sigma * statistics.NormalDist().inv_cdf(p))

    def survival(self, t: float) -> float:
        """The fraction of jobs still running after `t` seconds."""
        if t <= 0:
            return 1.0
        return 0.5 * math.erfc((math.log(t) - self.mu) / (self.sigma * _SQRT2))

    def hazard(self, t: float) -> float:
        """Chance per second that a job still running at `t` finishes now."""
        if t <= 0:
            return 0.0
        z = (math.log(t) - self.mu) / self.sigma
        density = math.exp(-0.5 * z * z) / (t * self.sigma * math.sqrt(2 * math.pi))
        survival = 0.5 * math.erfc(z / _SQRT2)
        if survival < 1e-300:
            # Far in the tail the lognormal hazard ~ z / (sigma * t) (Mills ratio).
            return max(z, 1.0) / (self.sigma * t)
        return density / survival


# The latencies an aggregator documents for these models (docs/providers, "latency"):
# text-to-image p50 4-15 s, p95 30 s; edits p50 8-30 s, p95 60 s. The prior takes the
# geometric middle of each p50 range, so it is wide enough to cover the whole range.
PRIORS: Mapping[str, DurationModel] = {
    "generate": DurationModel.from_quantiles(math.sqrt(4 * 15), 30.0),
    "edit": DurationModel.from_quantiles(math.sqrt(8 * 30), 60.0),
}


@dataclass(frozen=True)
class _Density:
    """Keller's poll density for one model, on a log-time grid, without the cost factor:
    the density for a poll cost c is `weights[i] / sqrt(c)` (so tuning c is cheap)."""

    times: tuple[float, ...]
    weights: tuple[float, ...]

    @classmethod
    def of(cls, model: DurationModel, floor: float) -> _Density:
        start = max(model.quantile(1e-4), floor / 4)
        end = max(model.quantile(0.999), start + floor)
        step = (math.log(end) - math.log(start)) / _STEPS
        times = [start * math.exp(i * step) for i in range(_STEPS + 1)]
        weights = [
            math.sqrt(model.hazard(times[i]) / 2) * (times[i] - times[i - 1])
            for i in range(1, _STEPS + 1)
        ]
        return cls(tuple(times[1:]), tuple(weights))

    def plan(self, poll_cost_s: float, floor: float, max_gap: float) -> tuple[float, ...]:
        scale = 1 / math.sqrt(poll_cost_s)
        plan: list[float] = []
        last = 0.0
        mass = 0.0
        for t, weight in zip(self.times, self.weights, strict=True):
            mass += weight * scale
            # Several polls can come due within one step; the floor keeps them apart.
            while mass >= 1.0 or t - last >= max_gap:
                when = t if mass >= 1.0 else min(t, last + max_gap)
                when = max(when, last + floor)
                if when > t:
                    break
                plan.append(when)
                last = when
                mass = max(0.0, mass - 1.0)
        # However sparse the budget, one poll by the 99.9th percentile: a plan of fast jobs
        # must never leave them to the tail gap.
        end = self.times[-1]
        if not plan or end - plan[-1] >= floor:
            plan.append(end if not plan else max(end, plan[-1] + floor))
        return tuple(plan)


def plan_polls(
    model: DurationModel,
    *,
    floor: float = DEFAULT_FLOOR_S,
    poll_cost_s: float = DEFAULT_POLL_COST_S,
    max_gap: float = DEFAULT_MAX_GAP_S,
) -> tuple[float, ...]:
    """Poll times (seconds after the job started) for jobs whose durations follow `model`.

    A poll falls wherever the integral of Keller's density `sqrt(hazard / (2 * poll_cost_s))`
    reaches the next whole number, with gaps kept within [floor, max_gap]; the plan ends with
    a poll at the model's 99.9th percentile (the schedule then repeats the last gap, capped
    at `max_gap`).
    """
    _check(floor, max_gap)
    if poll_cost_s <= 0:
        raise ValueError("poll_cost_s must be positive")
    return _Density.of(model, floor).plan(poll_cost_s, floor, max_gap)


def expected_polls(plan: Sequence[float], model: DurationModel, tail_gap: float) -> float:
    """Polls a job following `model` costs on average: poll k happens when the job was still
    running at poll k-1 (the first always happens)."""
    total = 0.0
    previous = 0.0
    for when in plan:
        total += model.survival(previous)
        previous = when
    # After the plan: one poll per tail gap while the job runs (a geometric tail estimate).
    remaining = model.survival(previous)
    if remaining > 0:
        total += remaining * (1 + model.quantile(0.9999) / tail_gap)
    return total


def fixed_expected_polls(model: DurationModel, interval: float = 2.0) -> float:
    """Polls a job following `model` costs on a fixed loop (first poll after `interval`)."""
    total, k = 0.0, 0
    while True:
        alive = model.survival(k * interval)
        if alive < 1e-6:
            return total
        total += alive
        k += 1


def tune_poll_cost(
    model: DurationModel,
    budget: float,
    *,
    floor: float = DEFAULT_FLOOR_S,
    max_gap: float = DEFAULT_MAX_GAP_S,
) -> float:
    """The poll cost whose plan spends `budget` polls per job on average (or comes closest:
    the floor caps how many polls any plan can spend early on)."""
    _check(floor, max_gap)
    return _tune(_Density.of(model, floor), model, budget, floor, max_gap)


def _tune(
    density: _Density, model: DurationModel, budget: float, floor: float, max_gap: float
) -> float:
    low, high = math.log(1e-4), math.log(1e3)  # ln(poll cost): dense ... sparse
    for _ in range(_TUNE_STEPS):
        middle = (low + high) / 2
        plan = density.plan(math.exp(middle), floor, max_gap)
        if expected_polls(plan, model, max_gap) > budget:
            low = middle
        else:
            high = middle
    return math.exp(high)


def _check(floor: float, max_gap: float) -> None:
    if floor <= 0 or max_gap < floor:
        raise ValueError(f"need floor > 0 and max_gap >= floor (got {floor}, {max_gap})")


@dataclass
class AdaptiveSchedule:
    """Polls at planned times after the job started (see `plan_polls`), never closer than
    `floor` apart, each wait stretched by up to `jitter` (a fraction) so jobs started together
    spread out; after the plan, every `tail_gap` seconds."""

    plan: tuple[float, ...]
    floor: float = DEFAULT_FLOOR_S
    tail_gap: float = DEFAULT_MAX_GAP_S
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random, repr=False)

    @classmethod
    def from_model(
        cls,
        model: DurationModel,
        *,
        floor: float = DEFAULT_FLOOR_S,
        poll_budget: float = DEFAULT_POLL_BUDGET,
        poll_cost_s: float | None = None,
        max_gap: float = DEFAULT_MAX_GAP_S,
        jitter: float = 0.1,
        rng: random.Random | None = None,
    ) -> AdaptiveSchedule:
        """A schedule for jobs whose durations follow `model`. It spends `poll_budget` times
        the polls of a 2 s loop on such jobs, placed where they cut the detection delay most;
        or, with `poll_cost_s`, whatever a poll worth that many seconds of delay buys."""
        _check(floor, max_gap)
        density = _Density.of(model, floor)
        if poll_cost_s is None:
            budget = poll_budget * fixed_expected_polls(model, REFERENCE_INTERVAL_S)
            poll_cost_s = _tune(density, model, budget, floor, max_gap)
        elif poll_cost_s <= 0:
            raise ValueError("poll_cost_s must be positive")
        plan = density.plan(poll_cost_s, floor, max_gap)
        last_gap = plan[-1] - plan[-2] if len(plan) >= 2 else plan[-1]
        return cls(
            plan=plan,
            floor=floor,
            tail_gap=min(max_gap, max(floor, last_gap)),
            jitter=jitter,
            rng=rng or random.Random(),
        )

    @classmethod
    def from_history(
        cls,
        durations: Iterable[float],
        *,
        operation: str = "generate",
        floor: float = DEFAULT_FLOOR_S,
        prior: DurationModel | None = None,
        poll_budget: float = DEFAULT_POLL_BUDGET,
        poll_cost_s: float | None = None,
        max_gap: float = DEFAULT_MAX_GAP_S,
        jitter: float = 0.1,
        rng: random.Random | None = None,
    ) -> AdaptiveSchedule:
        """A schedule learned from recent job durations (seconds, any order); with none, the
        documented latencies of `operation` ("generate" or "edit") are used."""
        base = prior if prior is not None else PRIORS.get(operation, PRIORS["generate"])
        return cls.from_model(
            DurationModel.fit(durations, prior=base),
            floor=floor,
            poll_budget=poll_budget,
            poll_cost_s=poll_cost_s,
            max_gap=max_gap,
            jitter=jitter,
            rng=rng,
        )

    def next_poll_at(self, elapsed: float) -> float:
        """The planned time of the next poll for a job `elapsed` seconds old (no jitter)."""
        index = bisect.bisect_right(self.plan, elapsed)
        if index < len(self.plan):
            return max(self.plan[index], elapsed + self.floor)
        return elapsed + self.tail_gap

    def delay(self, polls: int, elapsed: float) -> float:
        # Keyed on elapsed time, not the poll count, so a slow poll does not shift the plan,
        # and stateless, so the tasks of one attempt can share a schedule. The jitter only
        # ever delays: a poll that came early would find the same planned time next again.
        wait = self.next_poll_at(elapsed) - elapsed
        if self.jitter > 0:
            wait *= 1 + self.rng.uniform(0, self.jitter)
        return max(self.floor, wait)


# (provider, model, operation) -> recent durations in seconds, newest first (Ledger.latencies)
LatencySource = Callable[[str, str, str], Sequence[float]]


@dataclass
class _Cached:
    schedule: AdaptiveSchedule
    built_at: float


class AdaptiveSchedules:
    """Adaptive schedules per (provider, model, operation), learned from `latencies` (the
    ledger's, or None for the priors only) and rebuilt at most every `max_age_s`. `priors`
    (by operation) stand in for missing history: the documented latencies by default; a
    caller that knows better (e.g. emulators with a set latency) passes its own.

    `for_backend()` is cheap: after the first call for a backend it copies a cached plan.
    """

    def __init__(
        self,
        latencies: LatencySource | None = None,
        *,
        floors: Mapping[str, float] = PROVIDER_FLOORS,
        priors: Mapping[str, DurationModel] = PRIORS,
        poll_budget: float = DEFAULT_POLL_BUDGET,
        max_gap: float = DEFAULT_MAX_GAP_S,
        jitter: float = 0.1,
        max_age_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.latencies = latencies
        self.floors = dict(floors)
        self.priors = dict(priors)
        self.poll_budget = poll_budget
        self.max_gap = max_gap
        self.jitter = jitter
        self.max_age_s = max_age_s
        self.clock = clock
        self.rng = rng or random.Random()
        self._cache: dict[tuple[str, str, str], _Cached] = {}

    def floor_for(self, provider: str) -> float:
        return self.floors.get(provider, DEFAULT_FLOOR_S)

    def for_backend(self, provider: str, model: str, operation: str) -> AdaptiveSchedule:
        key = (provider, model, operation)
        now = self.clock()
        cached = self._cache.get(key)
        if cached is None or now - cached.built_at >= self.max_age_s:
            cached = _Cached(self._build(key), now)
            self._cache[key] = cached
        plan = cached.schedule
        # A fresh object per task (the plan tuple is shared); one rng keeps jitter seedable.
        return AdaptiveSchedule(plan.plan, plan.floor, plan.tail_gap, plan.jitter, self.rng)

    def forget(self) -> None:
        """Drop every cached plan (the next call per backend re-reads the history)."""
        self._cache.clear()

    def _build(self, key: tuple[str, str, str]) -> AdaptiveSchedule:
        provider, _, operation = key
        durations: Sequence[float] = ()
        if self.latencies is not None:
            try:
                durations = self.latencies(*key)[:_HISTORY]
            except Exception:  # a locked or broken ledger must not stop a paid job
                log.warning("no latency history for %s; using the documented latencies", key)
        return AdaptiveSchedule.from_history(
            durations,
            operation=operation,
            prior=self.priors.get(operation),
            floor=self.floor_for(provider),
            poll_budget=self.poll_budget,
            max_gap=self.max_gap,
            jitter=self.jitter,
            rng=self.rng,
        )

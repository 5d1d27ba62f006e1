"""Passive backend health: a consecutive-failure breaker per (provider, model, operation).

No probes are ever sent (a probe would be a paid image job): real attempts report their
outcome, and after an ejection the next real attempt is the single half-open trial. Failures
are classified before they count (see FailureKind); request errors never touch health. The
router asks `order()` which backends to try and never gets an empty answer for a non-empty
list. The data types and the store live in `imagerouter.health_store`; this module holds the
rules. The rules and their defaults are written out in docs/health.md.
"""

from __future__ import annotations

import math
import random
import statistics
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal

from imagerouter.clock import SYSTEM_CLOCK, Clock
from imagerouter.health_store import (
    DEFAULT_POLICY,
    BackendHealth,
    BackendKey,
    BackendState,
    BackendStats,
    FailureKind,
    HealthPolicy,
    HealthStore,
    MemoryHealthStore,
)

__all__ = [
    "DEFAULT_POLICY",
    "EWMA_ALPHA",
    "BackendHealth",
    "BackendKey",
    "BackendState",
    "BackendStats",
    "FailureKind",
    "HealthPolicy",
    "HealthStore",
    "HealthTracker",
    "MemoryHealthStore",
]

EWMA_ALPHA = 0.3
"""Weight of the newest latency in the moving average."""

_REASON_LIMIT = 200


# Which failure kind explains each unhealthy state (keys of BackendHealth.reasons).
_STATE_CAUSE = {
    BackendState.EJECTED: FailureKind.TRANSIENT,
    BackendState.HALF_OPEN: FailureKind.TRANSIENT,
    BackendState.RATE_LIMITED: FailureKind.RATE_LIMITED,
    BackendState.MISCONFIGURED: FailureKind.AUTH,
    BackendState.OUT_OF_CREDIT: FailureKind.CREDIT,
}


class HealthTracker:
    """Applies the health rules to records kept in a HealthStore.

    Protocol for callers: `begin(key)` before an attempt; when it returns True, end the
    attempt with exactly one of `record_success`, `record_failure` (a non-REQUEST kind) or
    `release`. `record_failure(REQUEST)` changes nothing, so a request error ends with
    `release`.
    """

    def __init__(
        self,
        policy: HealthPolicy = DEFAULT_POLICY,
        store: HealthStore | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        config_fingerprint: str = "",
    ) -> None:
        self.policy = policy
        self.store: HealthStore = store if store is not None else MemoryHealthStore()
        self.config_fingerprint = config_fingerprint
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        # One lock makes each read-modify-write atomic within this process; a store shared
        # between processes adds its own compare-and-set (HealthStore.update).
        self._lock = threading.RLock()

    # -- reading ---------------------------------------------------------------------------

    def state(self, key: BackendKey) -> BackendState:
        return self._state(self._load(key), self._clock())

    def available(self, key: BackendKey) -> bool:
        """HEALTHY, or HALF_OPEN with no attempt in flight (the trial slot is free)."""
        return self._available(self._load(key), self._clock())

    def retry_in(self, key: BackendKey) -> float | None:
        """Seconds until the backend is available again.

        None when it is available now, or when no time is known: MISCONFIGURED lasts until
        the config changes, and a HALF_OPEN backend waits for its trial's verdict.
        """
        return self._retry_in(self._load(key), self._clock())

    def order(self, keys: Sequence[BackendKey]) -> list[BackendKey]:
        """The available keys in the given order; never empty for a non-empty input.

        When none is available, the one key whose last failure is oldest (never failed counts
        as oldest; a key with no attempt in flight wins over a busy one; ties keep the given
        order). MISCONFIGURED keys are candidates only when every key is misconfigured: then
        the attempt is free (the provider answers 401/403 without billing) and the caller sees
        the provider's own error instead of a vague "no backend".
        """
        unique = list(dict.fromkeys(keys))
        now = self._clock()
        with self._lock:
            records = {key: self._load(key) for key in unique}
        usable = [key for key in unique if self._available(records[key], now)]
        if usable or not unique:
            return usable
        candidates = [k for k in unique if not self._misconfigured(records[k])] or unique

        def staleness(key: BackendKey) -> tuple[bool, float]:
            record = records[key]
            last = record.last_failure_at
            return (self._live_in_flight(record, now) > 0, -math.inf if last is None else last)

        return [min(candidates, key=staleness)]

    def latency(self, key: BackendKey) -> float | None:
        """The backend's smoothed latency in seconds (None before any success). Cheap: the
        router asks for it while ranking offers."""
        record = self.store.get(key)
        return None if record is None else record.ewma_latency_s

    def stats(self, key: BackendKey) -> BackendStats:
        return self._stats(key, self._load(key), self._clock())

    def snapshot(self, keys: Sequence[BackendKey] = ()) -> list[BackendStats]:
        """Stats for the given keys (in order), then every other known key (sorted)."""
        known = dict(self.store.items())
        now = self._clock()
        ordered = list(dict.fromkeys([*keys, *sorted(known)]))
        return [self._stats(key, known.get(key) or BackendHealth(), now) for key in ordered]

    # -- writing ---------------------------------------------------------------------------

    def begin(self, key: BackendKey) -> bool:
        """Call before an attempt. False means: do not attempt this backend now.

        A HEALTHY backend always says yes. Any other state (HALF_OPEN, or a backend that
        `order()` returned because nothing else was left) allows one attempt at a time: it
        is the trial, and it is granted only while no other attempt is in flight, so a
        trial never overlaps an attempt that started before the ejection.
        """
        def attempt(record: BackendHealth) -> bool:
            now = self._clock()
            in_flight = self._live_in_flight(record, now)
            if self._state(record, now) is not BackendState.HEALTHY:
                if in_flight > 0:
                    return False
                record.trial_in_flight = True
                record.trial_started_at = now
            record.in_flight = in_flight + 1
            record.last_begin_at = now
            return True

        with self._lock:
            return self.store.update(key, attempt)

    def release(self, key: BackendKey) -> None:
        """The attempt ended with no verdict on the backend (request error, budget stop)."""
        self._update(key, self._end_attempt)

    def record_success(self, key: BackendKey, latency_s: float | None = None) -> None:
        """Close the breaker, reset the failure streak, free the trial, keep the latency.

        A success also clears OUT_OF_CREDIT and MISCONFIGURED: the account and the key work.
        It leaves a 429 cooldown alone; the provider asked for that pause explicitly.
        """

        def apply(record: BackendHealth) -> None:
            now = self._clock()
            self._end_attempt(record)
            record.successes += 1
            record.last_success_at = now
            record.consecutive_failures = 0
            record.consecutive_successes += 1
            record.breaker_open = False
            record.ejected_until = None
            record.out_of_credit_until = None
            record.misconfigured_fingerprint = None
            for kind in (FailureKind.TRANSIENT, FailureKind.CREDIT, FailureKind.AUTH):
                record.reasons.pop(kind.value, None)
            # times_ejected decays by one per failure_threshold successes in a row, so a
            # backend that flaps (one trial success, then failures) keeps escalating.
            if (
                record.times_ejected
                and record.consecutive_successes >= self.policy.failure_threshold
            ):
                record.times_ejected -= 1
                record.consecutive_successes = 0
            if latency_s is not None and math.isfinite(latency_s) and latency_s >= 0:
                record.add_latency(latency_s)
                previous = record.ewma_latency_s
                record.ewma_latency_s = (
                    latency_s
                    if previous is None
                    else EWMA_ALPHA * latency_s + (1 - EWMA_ALPHA) * previous
                )

        self._update(key, apply)

    def record_failure(
        self,
        key: BackendKey,
        kind: FailureKind,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        """Apply one failed attempt. `retry_after` (seconds) matters for RATE_LIMITED only;
        `reason` (no secrets: an error message, never a request) is shown by `health`."""
        kind = FailureKind(kind)
        if kind is FailureKind.REQUEST:
            return
        policy = self.policy

        def apply(record: BackendHealth) -> None:
            now = self._clock()
            self._end_attempt(record)
            record.last_failure_at = now
            if kind is FailureKind.RATE_LIMITED:
                record.rate_limits += 1
                wait = policy.rate_limit_cooldown_s
                if retry_after is not None and math.isfinite(retry_after):
                    wait = retry_after
                wait = min(max(wait, 0.0), policy.max_rate_limit_s)
                record.cooldown_until = max(record.cooldown_until or now, now + wait)
                default = f"HTTP 429: rate limited; cooling down {wait:g} s"
            else:
                record.failures += 1
                record.consecutive_successes = 0
                if kind is FailureKind.TRANSIENT:
                    record.consecutive_failures += 1
                    self._count_toward_ejection(record, now)
                    default = f"{record.consecutive_failures} consecutive failures"
                elif kind is FailureKind.AUTH:
                    record.misconfigured_fingerprint = self.config_fingerprint
                    default = "HTTP 401/403: the API key is wrong or lacks a permission"
                else:
                    record.out_of_credit_until = now + policy.out_of_credit_s
                    default = "HTTP 402: out of credit"
            record.reasons[kind.value] = (reason or default)[:_REASON_LIMIT]

        self._update(key, apply)

    def record_balance(self, provider: str, balance_usd: Decimal) -> None:
        """Apply a free balance check to every known key of `provider`.

        A positive balance ends OUT_OF_CREDIT at once (the account was topped up); zero or
        less starts it, sparing a 402 round trip.
        """
        def apply(record: BackendHealth) -> None:
            if balance_usd > 0:
                record.out_of_credit_until = None
                record.reasons.pop(FailureKind.CREDIT.value, None)
            else:
                record.out_of_credit_until = self._clock() + self.policy.out_of_credit_s
                record.reasons[FailureKind.CREDIT.value] = f"balance is {balance_usd} USD"

        for key, _record in self.store.items():
            if key[0] == provider:
                self._update(key, apply)

    # -- rules -----------------------------------------------------------------------------

    def _count_toward_ejection(self, record: BackendHealth, now: float) -> None:
        if record.breaker_open:
            still_ejected = record.ejected_until is not None and now < record.ejected_until
            # Half-open: this failure is the trial's verdict, so eject again, for longer.
            # Still ejected: the attempt started before the ejection; the ejection stands.
            if not still_ejected:
                self._eject(record, now)
        elif record.consecutive_failures >= self.policy.failure_threshold:
            self._eject(record, now)

    def _eject(self, record: BackendHealth, now: float) -> None:
        policy = self.policy
        record.times_ejected += 1
        record.breaker_open = True
        duration = min(policy.base_ejection_s * record.times_ejected, policy.max_ejection_s)
        if policy.jitter:
            duration *= 1 + self._rng.uniform(-policy.jitter, policy.jitter)
        record.ejected_until = now + duration

    def _misconfigured(self, record: BackendHealth) -> bool:
        # Marked under another config fingerprint: the config changed since, so try again.
        marked = record.misconfigured_fingerprint
        return marked is not None and marked == self.config_fingerprint

    def _state(self, record: BackendHealth, now: float) -> BackendState:
        if self._misconfigured(record):
            return BackendState.MISCONFIGURED
        if _active(record.out_of_credit_until, now):
            return BackendState.OUT_OF_CREDIT
        if record.breaker_open and _active(record.ejected_until, now):
            return BackendState.EJECTED
        if _active(record.cooldown_until, now):
            return BackendState.RATE_LIMITED
        if record.breaker_open:
            return BackendState.HALF_OPEN
        return BackendState.HEALTHY

    def _live_in_flight(self, record: BackendHealth, now: float) -> int:
        """Attempts in flight, forgetting them once the last begin is older than the timeout."""
        if (
            record.last_begin_at is None
            or now - record.last_begin_at >= self.policy.trial_timeout_s
        ):
            return 0
        return record.in_flight

    def _available(self, record: BackendHealth, now: float) -> bool:
        state = self._state(record, now)
        if state is BackendState.HALF_OPEN:
            return self._live_in_flight(record, now) == 0
        return state is BackendState.HEALTHY

    def _retry_in(self, record: BackendHealth, now: float) -> float | None:
        state = self._state(record, now)
        if self._available(record, now) or state is BackendState.MISCONFIGURED:
            return None
        ejected_until = record.ejected_until if record.breaker_open else None
        ends = [
            end
            for end in (record.out_of_credit_until, ejected_until, record.cooldown_until)
            if end is not None and end > now
        ]
        return max(ends) - now if ends else None

    def _stats(self, key: BackendKey, record: BackendHealth, now: float) -> BackendStats:
        state = self._state(record, now)
        total = record.successes + record.failures
        cause = _STATE_CAUSE.get(state)
        reason = record.reasons.get(cause.value) if cause is not None else None
        if state is BackendState.HALF_OPEN:
            reason = f"half-open: the next attempt is a trial (after: {reason or 'failures'})"
        return BackendStats(
            key=key,
            state=state,
            available=self._available(record, now),
            consecutive_failures=record.consecutive_failures,
            times_ejected=record.times_ejected,
            successes=record.successes,
            failures=record.failures,
            success_rate=record.successes / total if total else None,
            p50_latency_s=statistics.median(record.latencies) if record.latencies else None,
            ewma_latency_s=record.ewma_latency_s,
            retry_in_s=self._retry_in(record, now),
            reason=reason,
        )

    # -- storage ---------------------------------------------------------------------------

    def _load(self, key: BackendKey) -> BackendHealth:
        return self.store.get(key) or BackendHealth()

    def _update(self, key: BackendKey, change: Callable[[BackendHealth], None]) -> None:
        # The lock orders this process's edits; the store's compare-and-set orders them
        # against other processes sharing it (shared.url: sqlite or redis).
        with self._lock:
            self.store.update(key, change)

    @staticmethod
    def _end_attempt(record: BackendHealth) -> None:
        record.in_flight = max(0, record.in_flight - 1)
        if record.in_flight == 0:
            record.trial_in_flight = False
            record.trial_started_at = None

    def close(self) -> None:
        """Close the store (a shared one pushes what it still holds). The Router calls this
        for the tracker it built."""
        self.store.close()

    def __repr__(self) -> str:
        return f"HealthTracker({self.policy!r}, store={self.store!r})"


def _active(until: float | None, now: float) -> bool:
    return until is not None and now < until

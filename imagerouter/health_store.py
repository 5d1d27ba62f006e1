"""The data behind backend health: kinds, states, policy, stats, the stored record, the store.

Plain data only; the rules that read and change a record live in `imagerouter.health`. The
record is numbers, strings and lists so a shared store (SQLite, Redis) can serialize it with
`to_dict` / `from_dict`; `MemoryHealthStore` is the in-process store (`shared.url: memory`).

Times in a record are readings of the tracker's clock. The default clock is monotonic and
means nothing outside its process, so a store shared between processes must be used with a
shared clock (`time.time`).
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from imagerouter.errors import ConfigError

__all__ = [
    "DEFAULT_POLICY",
    "MAX_LATENCIES",
    "BackendHealth",
    "BackendKey",
    "BackendState",
    "BackendStats",
    "FailureKind",
    "HealthPolicy",
    "HealthStore",
    "MemoryHealthStore",
    "key_from_text",
    "key_text",
]

T = TypeVar("T")

BackendKey = tuple[str, str, str]
"""(provider, model, operation), e.g. ("runapi", "gpt-image-2", "edit")."""

MAX_LATENCIES = 50
"""How many recent latencies a record keeps for the p50."""


class FailureKind(StrEnum):
    """What a failed attempt says about the backend."""

    TRANSIENT = "transient"  # 5xx, connect/timeouts, job or download failed, malformed
    RATE_LIMITED = "rate_limited"  # 429: short cooldown, not a failure toward ejection
    AUTH = "auth"  # 401/403: misconfigured until the config fingerprint changes
    CREDIT = "credit"  # 402: out of credit for a long time
    REQUEST = "request"  # 400/422/content policy: the request's fault, no health effect


class BackendState(StrEnum):
    """What the tracker thinks of a backend right now."""

    HEALTHY = "healthy"
    EJECTED = "ejected"
    HALF_OPEN = "half_open"
    RATE_LIMITED = "rate_limited"
    MISCONFIGURED = "misconfigured"
    OUT_OF_CREDIT = "out_of_credit"


@dataclass(frozen=True)
class HealthPolicy:
    """The numbers behind the rules; each maps to the config key `health.<field>`."""

    failure_threshold: int = 3
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    jitter: float = 0.1
    rate_limit_cooldown_s: float = 10.0
    max_rate_limit_s: float = 300.0
    out_of_credit_s: float = 3600.0
    # A trial (or any attempt) with no verdict after this long is presumed lost, so a crashed
    # caller cannot keep a half-open backend closed forever. Longer than a job may run.
    trial_timeout_s: float = 1200.0

    def __post_init__(self) -> None:
        threshold = self.failure_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError("failure_threshold must be an integer >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a finite number >= 0")
        if self.max_ejection_s < self.base_ejection_s:
            raise ValueError("max_ejection_s must be >= base_ejection_s")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, prefix: str = "health") -> HealthPolicy:
        """Build from the `health:` config section. `free_checks` belongs to the router."""
        names = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            key = f"{prefix}.{name}"
            if name == "free_checks":  # read by the router, checked here so typos surface
                if not isinstance(value, bool):
                    raise ConfigError(f"must be true or false, not {value!r}", key=key)
                continue
            if name not in names:
                allowed = ", ".join([*names, "free_checks"])
                raise ConfigError(f"unknown key; allowed: {allowed}", key=key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"must be a number, not {value!r}", key=key)
            if name == "failure_threshold" and not isinstance(value, int):
                raise ConfigError("must be a whole number", key=key)
            values[name] = value
        try:
            return cls(**values)
        except ValueError as exc:
            raise ConfigError(str(exc), key=prefix) from exc


DEFAULT_POLICY = HealthPolicy()


@dataclass(frozen=True)
class BackendStats:
    """A read-only view of one backend, for the router's strategies and `imagerouter health`."""

    key: BackendKey
    state: BackendState
    available: bool
    consecutive_failures: int
    times_ejected: int
    successes: int
    failures: int
    success_rate: float | None
    p50_latency_s: float | None
    ewma_latency_s: float | None
    retry_in_s: float | None
    reason: str | None

    @property
    def provider(self) -> str:
        return self.key[0]

    @property
    def model(self) -> str:
        return self.key[1]

    @property
    def operation(self) -> str:
        return self.key[2]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for `imagerouter health --json`."""
        provider, model, operation = self.key
        return {
            "provider": provider,
            "model": model,
            "operation": operation,
            "state": self.state.value,
            "available": self.available,
            "consecutive_failures": self.consecutive_failures,
            "times_ejected": self.times_ejected,
            "successes": self.successes,
            "failures": self.failures,
            "success_rate": _rounded(self.success_rate, 4),
            "p50_latency_s": _rounded(self.p50_latency_s, 3),
            "ewma_latency_s": _rounded(self.ewma_latency_s, 3),
            "retry_in_s": _rounded(self.retry_in_s, 1),
            "reason": self.reason,
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class BackendHealth:
    """Everything the tracker remembers about one backend."""

    # Breaker
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    times_ejected: int = 0
    breaker_open: bool = False
    ejected_until: float | None = None
    # Cooldowns that are not the breaker
    cooldown_until: float | None = None  # 429
    out_of_credit_until: float | None = None  # 402
    misconfigured_fingerprint: str | None = None  # 401/403, for this config only
    # Attempts in flight (begin() without a verdict yet) and the half-open trial
    in_flight: int = 0
    last_begin_at: float | None = None
    trial_in_flight: bool = False
    trial_started_at: float | None = None
    # Statistics
    successes: int = 0
    failures: int = 0  # transient, auth and credit failures; not 429s
    rate_limits: int = 0
    last_failure_at: float | None = None
    last_success_at: float | None = None
    latencies: list[float] = field(default_factory=list)
    ewma_latency_s: float | None = None
    # Why the backend is out, by FailureKind value ("transient", "auth", ...)
    reasons: dict[str, str] = field(default_factory=dict)

    def add_latency(self, seconds: float) -> None:
        """Keep the most recent MAX_LATENCIES latencies."""
        self.latencies.append(seconds)
        del self.latencies[:-MAX_LATENCIES]

    def copy(self) -> BackendHealth:
        """A copy that shares no mutable list or dict with the store (cheaper than deepcopy,
        which every health read and write would pay)."""
        return replace(self, latencies=list(self.latencies), reasons=dict(self.reasons))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe plain data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendHealth:
        """Read `to_dict` output; unknown keys (from a newer version) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: copy.deepcopy(v) for k, v in data.items() if k in known}
        record = cls(**values)
        del record.latencies[:-MAX_LATENCIES]
        return record


def key_text(key: BackendKey) -> str:
    """The key as one string for a shared store ("provider|model|operation")."""
    return "|".join(key)


def key_from_text(text: str) -> BackendKey:
    provider, model, operation = text.split("|", 2)
    return provider, model, operation


class HealthStore(Protocol):
    """Keeps one BackendHealth per backend: in memory (this module), in a SQLite file or in
    Redis (imagerouter.stores.shared_sqlite / shared_redis; `shared.url` picks one).

    Every method is called on the routing path (any thread, often an event loop's), so none
    may wait for the network or a file: the shared stores answer from a local mirror and
    exchange records with the shared copy on a thread of their own (stores/shared_mirror.py).

    `update` is the only way the tracker writes: `change` edits the record and its result is
    returned. A shared store applies it to its mirror at once and later to the shared record
    with a compare-and-set, running `change` again on the fresh record if another process
    wrote in between, so processes never lose each other's verdicts. `change` may therefore
    run more than once and must not have side effects beyond the record.
    """

    def get(self, key: BackendKey) -> BackendHealth | None:
        """The record for `key`, or None if the backend was never seen."""

    def put(self, key: BackendKey, record: BackendHealth) -> None:
        """Replace the record for `key`."""

    def items(self) -> list[tuple[BackendKey, BackendHealth]]:
        """Every stored record."""

    def update(self, key: BackendKey, change: Callable[[BackendHealth], T]) -> T:
        """Apply `change` to the record (a fresh one if never seen); its result."""

    def close(self) -> None:
        """Hand what is still queued to the shared copy and stop; idempotent."""


class MemoryHealthStore:
    """A thread-safe in-process store. Records are copied in and out, never shared."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[BackendKey, BackendHealth] = {}

    def get(self, key: BackendKey) -> BackendHealth | None:
        with self._lock:
            record = self._records.get(key)
            return record.copy() if record is not None else None

    def put(self, key: BackendKey, record: BackendHealth) -> None:
        with self._lock:
            self._records[key] = record.copy()

    def items(self) -> list[tuple[BackendKey, BackendHealth]]:
        with self._lock:
            return [(key, record.copy()) for key, record in self._records.items()]

    def update(self, key: BackendKey, change: Callable[[BackendHealth], T]) -> T:
        with self._lock:  # one process: the lock is the compare-and-set
            current = self._records.get(key)
            record = current.copy() if current is not None else BackendHealth()
            result = change(record)
            self._records[key] = record
            return result

    def close(self) -> None:
        """Nothing to hand on: the records live and die with the process."""

    def __repr__(self) -> str:
        return f"MemoryHealthStore({len(self._records)} backends)"

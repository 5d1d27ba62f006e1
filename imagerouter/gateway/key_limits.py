"""Per-key limits on the gateway: a requests-per-minute window and a budget scope per key.

`gateway.api_keys` entries may carry `rpm`, `daily_usd` and `monthly_usd` (config.GatewayKey).
The rate is a sliding 60-second window per key, kept in memory (one gateway process) or in
Redis for the whole fleet (`shared.url: redis://`, stores/shared_redis.py), counted
on the image calls that may pay (POST generations, edits, jobs) before their body is read; a
refused call is not counted, and its 429 `rate_limit_exceeded` says in Retry-After when the
oldest counted call leaves the window. Budgets are not kept here: every key is a
`BudgetScope("key", name)` that the request's reservations carry (budget.py), so they are
held in the ledger with the global budget, in the same transaction, and concurrent requests
of one key never overshoot. Errors name the key by its configured name only.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..budget import KEY_SCOPE, BudgetLimits, BudgetScope, current_scopes
from ..errors import ConfigError
from .errors import ApiError

if TYPE_CHECKING:
    from ..config import Config, GatewayKey, SharedSettings
    from ..offers import Offer
    from ..router import Router
    from ..stores.shared_redis import RedisRateWindow
    from .openai_shapes import ImageCall

__all__ = [
    "PAID_ROUTES",
    "WINDOW_S",
    "KeyLimits",
    "RateWindow",
    "precheck_stream",
    "rate_limited",
]

WINDOW_S = 60.0
# Route names (gateway/app.py) whose POSTs start paid work; only they count against `rpm`.
PAID_ROUTES = frozenset({"generations", "edits", "jobs"})


class RateWindow:
    """At most `limit` admissions in any `WINDOW_S` seconds, on an injected monotonic clock."""

    def __init__(self, limit: int, *, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        self._times: deque[float] = deque()

    def admit(self) -> float | None:
        """Count one call and return None, or return the seconds until one would fit."""
        now = self._clock()
        while self._times and self._times[0] <= now - WINDOW_S:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return self._times[0] + WINDOW_S - now
        self._times.append(now)
        return None


class KeyLimits:
    """The limits of every configured key, looked up by the key matched at authentication."""

    def __init__(
        self,
        keys: Sequence[GatewayKey],
        *,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedSettings | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, RateWindow] = {
            key.name: RateWindow(key.rpm, clock=clock) for key in keys if key.rpm is not None
        }
        self._shared: dict[str, RedisRateWindow] = {}
        if shared is not None and shared.url.startswith(("redis://", "rediss://")):
            # shared.url on Redis: one window per key for the whole fleet (the local one
            # counts while Redis is unreachable). Wall time: the same in every replica.
            from ..stores.redis_conn import LoopRedis, Outage
            from ..stores.shared_redis import RedisRateWindow

            clients = LoopRedis(shared.url)
            outage = Outage("gateway rpm windows", "counting each replica's calls locally")
            shared_clock = time.time if clock is time.monotonic else clock
            self._shared = {
                name: RedisRateWindow(clients, f"{shared.prefix}rpm:{name}", window.limit,
                                      window_s=WINDOW_S, clock=shared_clock, fallback=window,
                                      outage=outage)
                for name, window in self._windows.items()
            }
        self._scopes = {
            key.name: BudgetScope(
                KEY_SCOPE,
                key.name,
                BudgetLimits(daily_usd=key.daily_usd, monthly_usd=key.monthly_usd),
            )
            for key in keys
        }

    @property
    def has_budgets(self) -> bool:
        return any(scope.limits != BudgetLimits() for scope in self._scopes.values())

    def scope(self, key: GatewayKey | None) -> BudgetScope | None:
        """The budget scope a request made with `key` reserves under (None: no key)."""
        return None if key is None else self._scopes.get(key.name)

    def admit(self, key: GatewayKey | None) -> None:
        """Count one paid call of `key` in this process's window, or raise 429
        rate_limit_exceeded. (The gateway calls `aadmit`, which also counts fleet-wide.)"""
        window = None if key is None else self._windows.get(key.name)
        if key is None or window is None:
            return
        with self._lock:
            wait = window.admit()
        if wait is not None:
            raise rate_limited(key.name, window.limit, wait)

    async def aadmit(self, key: GatewayKey | None) -> None:
        """`admit`, in the fleet's window when `shared.url` is Redis (one script call on
        redis.asyncio; this process's window counts while Redis is unreachable)."""
        shared = None if key is None else self._shared.get(key.name)
        if key is None or shared is None:
            self.admit(key)
            return
        wait = await shared.admit()
        if wait is not None:
            raise rate_limited(key.name, shared.limit, wait)

    def check(self, config: Config) -> None:
        """Budgets live in the ledger: refuse per-key budgets with the ledger turned off."""
        if self.has_budgets and not config.ledger.enabled:
            raise ConfigError(
                "per-key budgets (gateway.api_keys daily_usd / monthly_usd) are kept in the "
                "ledger; enable it (ledger.enabled: true)",
                file=config.source,
                line=config.locate("gateway"),
                key="gateway.api_keys",
            )

    def __repr__(self) -> str:
        shared = f", shared={len(self._shared)}" if self._shared else ""
        return f"KeyLimits(keys={len(self._scopes)}, rated={len(self._windows)}{shared})"


def precheck_stream(router: Router, call: ImageCall, offers: Sequence[Offer]) -> None:
    """A streamed answer has sent its 200 before its job reserves, so a key that cannot
    afford even the cheapest eligible offer is refused now, with a real 429. Idempotent
    repeats are left alone (a finished one is served again without paying)."""
    scopes = current_scopes()
    if router.budget is None or not scopes or call.idempotency_key is not None:
        return
    if not call.answer_shape().stream:
        return
    prices = [o.total_usd for o in offers if o.eligible and o.total_usd is not None]
    if prices:
        router.budget.check_fits(min(prices), scopes=scopes)


def rate_limited(name: str, limit: int, wait_s: float) -> ApiError:
    """OpenAI's 429 for a request rate, with Retry-After in whole seconds (at least 1)."""
    retry_after = max(1, math.ceil(wait_s))
    return ApiError(
        429,
        f"Rate limit reached for gateway key {name} on requests per min (RPM): Limit {limit}, "
        f"Used {limit}, Requested 1. Please try again in {retry_after}s.",
        type="requests",
        code="rate_limit_exceeded",
        headers={
            "retry-after": str(retry_after),
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{retry_after}s",
            # Nothing was done, so a retry after the wait is safe (and what OpenAI apps do).
            "x-should-retry": "true",
        },
    )

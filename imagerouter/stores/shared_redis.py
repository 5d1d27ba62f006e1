"""Shared state in Redis (`shared.url: redis://...`): health, rate windows, callback nudges.

- `RedisHealthStore`: one JSON record per backend, changed with WATCH/MULTI/EXEC (an
  optimistic compare-and-set, retried), so replicas never lose each other's verdicts. The
  health tracker is synchronous and asks on every routing decision, so this uses redis-py's
  blocking client with short socket timeouts (a loopback round trip is well under a
  millisecond). When Redis is unreachable it keeps serving from a local in-memory copy (each
  replica then learns outages alone, as before) and says so once in the log.
- `RedisRateWindow`: the gateway's per-key requests-per-minute window as a sorted set,
  counted and trimmed by one Lua script (atomic across replicas).
- `RedisNudges`: callback nudges on a pub/sub channel (redis-py asyncio), so a provider
  callback that lands on replica B wakes the poll that replica A is running.

Every key starts with the store's prefix (default `imagerouter:`), so tests and several
fleets can share one Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from ..health_store import (
    BackendHealth,
    BackendKey,
    MemoryHealthStore,
    key_from_text,
    key_text,
)

__all__ = [
    "DEFAULT_PREFIX",
    "RedisHealthStore",
    "RedisNudges",
    "RedisRateWindow",
    "redis_client",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_PREFIX = "imagerouter:"
_TIMEOUT_S = 2.0
_CAS_ATTEMPTS = 50


def redis_client(url: str) -> redis.Redis:
    """A blocking client with timeouts short enough that a dead Redis never stalls routing."""
    return redis.Redis.from_url(
        url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S, decode_responses=True
    )


class RedisHealthStore:
    """Health records shared by every process that uses the same Redis and prefix."""

    def __init__(
        self, url: str, *, prefix: str = DEFAULT_PREFIX, client: redis.Redis | None = None
    ) -> None:
        self._client = client if client is not None else redis_client(url)
        self._prefix = prefix
        self._index = f"{prefix}health:index"
        self._local = MemoryHealthStore()  # used only while Redis is unreachable
        self._warned = False

    def _name(self, key: BackendKey) -> str:
        return f"{self._prefix}health:{key_text(key)}"

    def get(self, key: BackendKey) -> BackendHealth | None:
        try:
            raw = self._client.get(self._name(key))
        except redis.RedisError as exc:
            self._degraded(exc)
            return self._local.get(key)
        return None if raw is None else _load(str(raw))

    def put(self, key: BackendKey, record: BackendHealth) -> None:
        try:
            with self._client.pipeline() as pipe:
                pipe.set(self._name(key), _dump(record))
                pipe.sadd(self._index, key_text(key))
                pipe.execute()
        except redis.RedisError as exc:
            self._degraded(exc)
            self._local.put(key, record)

    def items(self) -> list[tuple[BackendKey, BackendHealth]]:
        try:
            names = sorted(str(n) for n in self._client.smembers(self._index))
            raws = self._client.mget([f"{self._prefix}health:{n}" for n in names]) if names else []
        except redis.RedisError as exc:
            self._degraded(exc)
            return self._local.items()
        return [
            (key_from_text(name), _load(str(raw)))
            for name, raw in zip(names, raws, strict=True)
            if raw is not None
        ]

    def update(self, key: BackendKey, change: Callable[[BackendHealth], T]) -> T:
        name = self._name(key)
        try:
            with self._client.pipeline() as pipe:
                for _ in range(_CAS_ATTEMPTS):
                    try:
                        pipe.watch(name)  # type: ignore[no-untyped-call]
                        raw = pipe.get(name)
                        record = BackendHealth() if raw is None else _load(str(raw))
                        result = change(record)
                        pipe.multi()
                        pipe.set(name, _dump(record))
                        pipe.sadd(self._index, key_text(key))
                        pipe.execute()  # WatchError when another process wrote `name`
                        return result
                    except redis.WatchError:
                        continue
            raise redis.RedisError(f"no compare-and-set after {_CAS_ATTEMPTS} attempts")
        except redis.RedisError as exc:
            self._degraded(exc)
            return self._local.update(key, change)

    def _degraded(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "shared health store unreachable (%s); using this process's own "
                "health records until it is back",
                type(exc).__name__,
            )

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisHealthStore(prefix={self._prefix!r})"


# KEYS[1] the window; ARGV: now, window seconds, limit, a unique member. Returns nil when
# the call is counted, else the seconds until the oldest counted call leaves the window.
_ADMIT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return false
"""


class RedisRateWindow:
    """At most `limit` admissions in any `window_s` seconds across every replica.

    Same interface as gateway.key_limits.RateWindow. The clock must be shared between
    processes (wall time, the default). Redis unreachable: the window is kept locally.
    """

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        limit: int,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        fallback: Any = None,
    ) -> None:
        self.limit = limit
        self._client = client
        self._name = name
        self._window_s = window_s
        self._clock = clock
        self._script = client.register_script(_ADMIT)
        self._fallback = fallback  # a local RateWindow, or None to admit while Redis is down

    def admit(self) -> float | None:
        """Count one call and return None, or return the seconds until one would fit."""
        try:
            wait = self._script(
                keys=[self._name],
                args=[repr(self._clock()), repr(self._window_s), self.limit, uuid.uuid4().hex],
            )
        except redis.RedisError as exc:
            log.warning("shared rate window unreachable (%s); counting locally", type(exc).__name__)
            return None if self._fallback is None else self._fallback.admit()
        if wait is None:
            return None
        seconds = float(wait)
        return seconds if math.isfinite(seconds) else self._window_s


class RedisNudges:
    """Callback nudges across replicas: `publish` on the replica the callback reached, and
    every replica's `run` loop hands the (provider, task id) to its own `deliver`."""

    def __init__(
        self,
        url: str,
        deliver: Callable[[str, str], bool],
        *,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._url = url
        self._deliver = deliver
        self.channel = f"{prefix}nudges"
        self._client: aioredis.Redis | None = None
        self.ready = asyncio.Event()  # set once `run` is subscribed (tests wait on it)

    def _connection(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url, socket_connect_timeout=_TIMEOUT_S, decode_responses=True
            )
        return self._client

    async def publish(self, provider: str, task_id: str) -> int:
        """Tell every replica; the number that heard it (0 when Redis is unreachable)."""
        try:
            heard = await self._connection().publish(self.channel, json.dumps([provider, task_id]))
        except redis.RedisError as exc:
            log.warning("could not publish a callback nudge (%s)", type(exc).__name__)
            return 0
        return int(heard)

    async def run(self) -> None:
        """Deliver nudges until cancelled; reconnects after a Redis outage."""
        while True:
            try:
                pubsub = self._connection().pubsub()
                async with pubsub:
                    await pubsub.subscribe(self.channel)
                    self.ready.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._handle(str(message.get("data")))
            except redis.RedisError as exc:
                self.ready.clear()
                log.warning("callback nudges: Redis unreachable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)

    def _handle(self, data: str) -> None:
        try:
            provider, task_id = json.loads(data)
        except (ValueError, TypeError):
            return  # not ours; a nudge is only ever a hint
        if isinstance(provider, str) and isinstance(task_id, str):
            self._deliver(provider, task_id)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _dump(record: BackendHealth) -> str:
    return json.dumps(record.to_dict())


def _load(raw: str) -> BackendHealth:
    return BackendHealth.from_dict(json.loads(raw))

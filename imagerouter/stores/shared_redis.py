"""Shared state in Redis (`shared.url: redis://...`): health, rate windows, callback nudges.

Everything here is redis-py asyncio; nothing blocks the caller's event loop.

- `RedisHealthStore` (shared_redis_health.py): health records in a local mirror that reads
  answer from memory, kept in step with Redis by compare-and-set pushes and change notices.
- `RedisRateWindow`: the gateway's per-key requests-per-minute window as a sorted set,
  counted and trimmed by one Lua script (atomic across replicas).
- `RedisNudges`: callback nudges on a pub/sub channel, so a provider callback that lands on
  replica B wakes the poll that replica A is running.

Every key starts with the store's prefix (default `imagerouter:`), so tests and several
fleets can share one Redis. Redis down: health and rpm windows keep working from this
process's own state, nudges are dropped (polls still run), and each says so once in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from .redis_conn import DEFAULT_PREFIX, REDIS_ERRORS, TIMEOUT_S, LoopRedis, Outage
from .shared_redis_health import RedisHealthStore

__all__ = [
    "DEFAULT_PREFIX",
    "LoopRedis",
    "RedisHealthStore",
    "RedisNudges",
    "RedisRateWindow",
]

log = logging.getLogger(__name__)


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


class LocalWindow(Protocol):
    """What counts while Redis is unreachable (gateway.key_limits.RateWindow)."""

    def admit(self) -> float | None: ...


class RedisRateWindow:
    """At most `limit` admissions in any `window_s` seconds across every replica.

    The async twin of gateway.key_limits.RateWindow. The clock must be shared between
    processes (wall time, the default). Redis unreachable: `fallback` counts (or, without one,
    every call is admitted), Redis is tried again every few seconds, and the outage is
    logged once.
    """

    def __init__(
        self,
        clients: LoopRedis,
        name: str,
        limit: int,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        fallback: LocalWindow | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.limit = limit
        self._clients = clients
        self._name = name
        self._window_s = window_s
        self._clock = clock
        self._script: AsyncScript | None = None
        self._fallback = fallback
        # One Outage may be shared by every key's window: one log line per outage, not per key.
        self._outage = outage if outage is not None else Outage(
            "gateway rpm windows", "counting each replica's calls locally"
        )

    async def admit(self) -> float | None:
        """Count one call and return None, or return the seconds until one would fit."""
        if not self._outage.should_try():
            return self._local()
        client = self._clients.current()
        if self._script is None:
            self._script = client.register_script(_ADMIT)
        try:
            wait = await self._script(
                keys=[self._name],
                args=[repr(self._clock()), repr(self._window_s), self.limit, uuid.uuid4().hex],
                client=client,
            )
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return self._local()
        self._outage.worked()
        if wait is None:
            return None
        seconds = float(wait)
        return seconds if math.isfinite(seconds) else self._window_s

    def _local(self) -> float | None:
        return None if self._fallback is None else self._fallback.admit()


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
        self._outage = Outage("callback nudges", "polls run on their own schedule")

    def _connection(self) -> aioredis.Redis:
        if self._client is None:
            # No socket timeout: the subscriber waits for messages as long as there are none.
            self._client = aioredis.Redis.from_url(
                self._url, socket_connect_timeout=TIMEOUT_S, decode_responses=True
            )
        return self._client

    async def publish(self, provider: str, task_id: str) -> int:
        """Tell every replica; the number that heard it (0 when Redis is unreachable)."""
        try:
            heard = await self._connection().publish(self.channel, json.dumps([provider, task_id]))
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return 0
        return int(heard)

    async def run(self) -> None:
        """Deliver nudges until cancelled; reconnects after a Redis outage."""
        while True:
            try:
                pubsub = self._connection().pubsub()
                async with pubsub:
                    await pubsub.subscribe(self.channel)
                    self._outage.worked()
                    self.ready.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._handle(str(message.get("data")))
            except REDIS_ERRORS as exc:
                self.ready.clear()
                self._outage.failed(exc)
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

"""Connections to Redis for the shared stores: redis-py asyncio clients, and outages said once.

A redis.asyncio client's connections belong to the event loop that opened them, and the
Router is used from many loops (the portal thread, `asyncio.run` in scripts, the gateway's
loop), so code that runs on the caller's loop takes its client from `LoopRedis` (one client
per loop, like transport.LoopClients). The health store runs on a loop of its own
(shared_redis_health.py) and holds one plain client.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable

import redis.asyncio as aioredis

__all__ = ["DEFAULT_PREFIX", "REDIS_ERRORS", "TIMEOUT_S", "LoopRedis", "Outage", "async_redis"]

log = logging.getLogger("imagerouter.stores.shared_redis")

DEFAULT_PREFIX = "imagerouter:"
TIMEOUT_S = 2.0  # a dead or hung Redis costs a request at most this long, then it is skipped
# What an unreachable or misbehaving Redis raises: redis-py's own errors, and the socket's.
REDIS_ERRORS = (aioredis.RedisError, OSError, asyncio.TimeoutError)


def async_redis(url: str) -> aioredis.Redis:
    """A redis.asyncio client with timeouts short enough that a dead Redis never stalls."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=TIMEOUT_S,
        socket_connect_timeout=TIMEOUT_S,
        decode_responses=True,
    )


class LoopRedis:
    """One redis.asyncio client per running event loop, made on first use in that loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]
        self._clients = weakref.WeakKeyDictionary()

    def current(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = async_redis(self.url)
        return client

    async def aclose_current(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def __repr__(self) -> str:
        return f"LoopRedis({len(self._clients)} loops)"  # never the URL: it may hold a password


class Outage:
    """Whether Redis is reachable, as one user of it saw last, logged on change only.

    While it is down, callers that can fall back skip Redis for `retry_s` after each failure
    (so a hung Redis costs one timeout per `retry_s`, not one per request), then try again.
    """

    def __init__(
        self,
        what: str,
        fallback: str,
        *,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.fallback = fallback
        self.retry_s = retry_s
        self._clock = clock
        self.down_since: float | None = None
        self._last_try = 0.0

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def should_try(self) -> bool:
        """Up, or down long enough that another try is due."""
        return self.down_since is None or self._clock() - self._last_try >= self.retry_s

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        self._last_try = now
        if self.down_since is None:
            self.down_since = now
            log.warning("%s: Redis unreachable (%s); %s", self.what, type(exc).__name__,
                        self.fallback)

    def worked(self) -> None:
        if self.down_since is not None:
            self.down_since = None
            log.warning("%s: Redis reachable again", self.what)

"""Backend health in Redis (`shared.url: redis://...`), read from a local mirror.

Routing reads health on every decision and writes it on every attempt, on the caller's loop;
none of that waits for Redis. The records live in a `HealthMirror` (shared_mirror.py) that
reads answer from memory, and a loop of this store's own (a daemon thread, portal.Portal)
keeps it in step with Redis over redis.asyncio:

- writes: each queued change is pushed by a Lua compare-and-set on the record's version;
  when another replica wrote first, the script answers with its record and the queued
  changes are applied again on top of it, so no replica loses another's verdict;
- the same script publishes the new record on `<prefix>health:changes`, and every replica's
  subscriber puts it in its mirror, so an ejection reaches the others in a round trip;
- a full read of every record after each (re)subscribe and every `refresh_s` catches what a
  dropped connection missed.

Redis down: the mirror keeps serving this replica's own records (each replica learns outages
alone, as a single process does), writes queue up (bounded, shared_mirror.MAX_QUEUED), the
outage is logged once, and the loop reconnects every `reconnect_s`, pushing the queue when
Redis is back.

Keys: `<prefix>health:rec:<provider|model|operation>` (a hash: `v` the version, `record` the
JSON), `<prefix>health:index` (the set of backends).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis

from ..health_store import BackendHealth, BackendKey, key_from_text, key_text
from ..portal import Portal
from .redis_conn import DEFAULT_PREFIX, REDIS_ERRORS, TIMEOUT_S, Outage, async_redis
from .shared_mirror import HealthMirror, Push

__all__ = ["RedisHealthStore"]

T = TypeVar("T")
log = logging.getLogger("imagerouter.stores.shared_redis")

_CAS_ATTEMPTS = 50

# KEYS: the record hash, the index set. ARGV: the version the change was made on, the new
# record, the backend's key text, the channel. Returns {1, new version}, or {0, current
# version, current record} when someone else wrote first.
_CAS = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then
  return {0, v, redis.call('HGET', KEYS[1], 'record') or ''}
end
v = v + 1
redis.call('HSET', KEYS[1], 'v', v, 'record', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], cjson.encode({ARGV[3], v, ARGV[2]}))
return {1, v}
"""


class RedisHealthStore:
    """Health records shared by every process that uses the same Redis and prefix."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        refresh_s: float = 5.0,
        reconnect_s: float = 1.0,
        start_wait_s: float = TIMEOUT_S,
    ) -> None:
        self._url = url  # never shown: it may carry a password
        self._prefix = prefix
        self._index = f"{prefix}health:index"
        self.channel = f"{prefix}health:changes"
        self._refresh_s = refresh_s
        self._reconnect_s = reconnect_s
        self._mirror = HealthMirror(self._wake)
        self._outage = Outage(
            "shared health", "using this process's own health records until it is back"
        )
        self._loaded = threading.Event()  # the first full read answered (or failed)
        self._wake_due = False
        self._closed = False
        self._portal = Portal(name="imagerouter-health-redis")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.Event | None = None
        self._client: aioredis.Redis | None = None
        self._cas: Any = None  # the compare-and-set script, registered on the loop
        self._tasks: list[asyncio.Task[None]] = []
        self._portal.call(self._start)
        # A short wait at process start, so the first routing decision (and `imagerouter
        # health`) already sees the fleet's records; never again after this.
        self._loaded.wait(start_wait_s)
        this = weakref.ref(self)

        def flush_at_exit() -> None:  # a process that forgets close() still pushes its verdicts
            store = this()
            if store is not None:
                store.close()

        self._at_exit = flush_at_exit
        atexit.register(flush_at_exit)

    # -- the HealthStore interface: memory only ----------------------------------------------

    def get(self, key: BackendKey) -> BackendHealth | None:
        return self._mirror.get(key)

    def put(self, key: BackendKey, record: BackendHealth) -> None:
        self._mirror.put(key, record)

    def items(self) -> list[tuple[BackendKey, BackendHealth]]:
        return self._mirror.items()

    def update(self, key: BackendKey, change: Callable[[BackendHealth], T]) -> T:
        return self._mirror.update(key, change)

    # -- waiting and closing -------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every change made here is in Redis; False if `timeout` ran out."""
        return self._mirror.wait_settled(timeout)

    def wait_for(
        self, key: BackendKey, test: Callable[[BackendHealth], bool], timeout: float
    ) -> bool:
        """Wait until this store's record of `key` passes `test` (tests, tools)."""
        return self._mirror.wait_for_record(key, test, timeout)

    def close(self, *, flush_timeout: float = 5.0) -> None:
        """Push what is queued (unless Redis is down), stop the loop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        if not self._outage.is_down:
            self._mirror.wait_settled(flush_timeout)
        self._portal.close(self._aclose)
        self._loop = None

    # -- the store's own loop ------------------------------------------------------------------

    def _wake(self) -> None:
        """From any thread: there is something to push. One wake-up per batch of writes."""
        loop = self._loop
        if self._wake_due or loop is None:
            return
        self._wake_due = True
        try:
            loop.call_soon_threadsafe(self._woken)
        except RuntimeError:  # the loop closed under us: the store is closing
            self._wake_due = False

    def _woken(self) -> None:
        self._wake_due = False  # before set(): a write after this line wakes us again
        if self._pending is not None:
            self._pending.set()

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pending = asyncio.Event()
        self._client = async_redis(self._url)
        self._cas = self._client.register_script(_CAS)
        self._tasks = [  # held: a task nobody references may be garbage-collected mid-run
            asyncio.create_task(self._listen(), name="health-listen"),
            asyncio.create_task(self._push_forever(), name="health-push"),
        ]

    async def _aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def _push_forever(self) -> None:
        assert self._pending is not None
        while True:
            await self._pending.wait()
            self._pending.clear()
            keys = self._mirror.dirty()
            results = await asyncio.gather(*(self._push(k) for k in keys), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if not failed:
                continue
            if isinstance(failed[0], REDIS_ERRORS):
                self._failed(failed[0])
            else:
                log.error("shared health: a push failed", exc_info=failed[0])
            await asyncio.sleep(self._reconnect_s)
            self._pending.set()  # try again; the queue is still there

    async def _push(self, key: BackendKey) -> None:
        push: Push | None = self._mirror.begin_push(key)
        if push is None:
            return
        assert self._client is not None
        name, text = self._record_name(key_text(key)), key_text(key)
        try:
            for _ in range(_CAS_ATTEMPTS):
                record = push.apply()
                answer = await self._cas(
                    keys=[name, self._index],
                    args=[push.version, _dump(record), text, self.channel],
                    client=self._client,
                )
                if int(answer[0]):
                    self._worked()  # first: whoever waits for the push sees it said
                    self._mirror.pushed(push, int(answer[1]), record)
                    return
                raw = str(answer[2])
                push = self._mirror.conflicted(push, int(answer[1]), _load(raw) if raw else None)
        except BaseException:
            self._mirror.abandon(push)
            raise
        self._mirror.abandon(push)  # outrun 50 times in a row: try again on the next wake
        assert self._pending is not None
        self._pending.set()

    async def _listen(self) -> None:
        """Subscribe, read everything, then apply each change as it is announced; every
        `refresh_s` read everything again. Any Redis error: reconnect after `reconnect_s`."""
        assert self._client is not None
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    await self._refresh()  # after subscribing: no change falls in between
                    self._worked()
                    self._loaded.set()
                    if self._pending is not None:
                        self._pending.set()  # push what queued up while we were away
                    refreshed = time.monotonic()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self._refresh_s
                        )
                        if message is not None and message.get("type") == "message":
                            self._announced(str(message.get("data")))
                        if time.monotonic() - refreshed >= self._refresh_s:
                            await self._refresh()
                            refreshed = time.monotonic()
            except REDIS_ERRORS as exc:
                self._failed(exc)
                self._loaded.set()
                await asyncio.sleep(self._reconnect_s)

    async def _refresh(self) -> None:
        assert self._client is not None
        names = sorted(str(n) for n in await self._client.smembers(self._index))
        if not names:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for text in names:
                pipe.hmget(self._record_name(text), ["v", "record"])
            rows: list[Any] = await pipe.execute()
        for text, (version, raw) in zip(names, rows, strict=True):
            if version is not None and raw is not None:
                self._heard(text, int(version), str(raw))

    def _announced(self, data: str) -> None:
        try:
            text, version, raw = json.loads(data)
            version = int(version)
        except (ValueError, TypeError):
            log.warning("ignored a malformed shared health notice")
            return
        self._heard(str(text), version, str(raw))

    def _heard(self, text: str, version: int, raw: str) -> None:
        try:
            key = key_from_text(text)
            if version > self._mirror.known_version(key):  # parse only what is news
                self._mirror.heard(key, version, _load(raw))
        except (ValueError, TypeError):
            log.warning("ignored a malformed shared health record")

    def _failed(self, exc: BaseException) -> None:
        self._outage.failed(exc)
        self._mirror.reachable = False

    def _worked(self) -> None:
        self._outage.worked()
        self._mirror.reachable = True

    def _record_name(self, text: str) -> str:
        return f"{self._prefix}health:rec:{text}"

    def __repr__(self) -> str:
        return f"RedisHealthStore(prefix={self._prefix!r})"


def _dump(record: BackendHealth) -> str:
    return json.dumps(record.to_dict())


def _load(raw: str) -> BackendHealth:
    return BackendHealth.from_dict(json.loads(raw))

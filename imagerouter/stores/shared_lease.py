"""One sweeper at a time in a fleet: a lease held by one replica, taken over when it lapses.

Every `serve` process runs the sweeper (imagerouter/resume.py `sweep`), which collects the
paid jobs of dead processes; with a lease only its holder runs a pass, so two replicas never
collect the same job at once. The holder renews the lease on every pass; a replica killed
with SIGKILL stops renewing, and after `ttl_s` the next replica to ask takes it over.

- `RedisLease`: `SET name token NX PX ttl`, renewed by a compare-and-expire script
  (redis.asyncio, on the caller's loop).
- `SqliteLease`: a row in the shared SQLite file, changed in a `BEGIN IMMEDIATE` transaction.
- `lease_for(url, ...)`: the lease `shared.url` names; None for `memory` (one process: no
  one to share with).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

__all__ = ["DEFAULT_TTL_S", "Lease", "RedisLease", "SqliteLease", "lease_for"]

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 180.0  # three sweeper intervals: a live holder always renews in time

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    """A lease in Redis (redis.asyncio). Calling it (awaited) says whether this process holds
    it now."""

    def __init__(self, url: str, name: str, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        from .redis_conn import LoopRedis, Outage

        self._clients = LoopRedis(url)  # the sweeper's loop; a test's loop
        self._renew: AsyncScript | None = None
        self._outage = Outage("sweeper lease", "skipping sweeper passes until it is back")
        self.name = name
        self.token = secrets.token_hex(16)  # this holder; never a secret of the deployment
        self._ttl_ms = int(ttl_s * 1000)

    async def __call__(self) -> bool:
        from .redis_conn import REDIS_ERRORS

        client = self._clients.current()
        if self._renew is None:
            self._renew = client.register_script(_RENEW)
        try:
            if await self._renew(keys=[self.name], args=[self.token, self._ttl_ms], client=client):
                held = True
            else:
                held = bool(await client.set(self.name, self.token, nx=True, px=self._ttl_ms))
        except REDIS_ERRORS as exc:  # no Redis, no lease: skip the pass, try again later
            self._outage.failed(exc)
            return False
        self._outage.worked()
        return held

    async def release(self) -> None:
        """Give the lease up now (the next replica need not wait for it to lapse)."""
        from .redis_conn import REDIS_ERRORS

        client = self._clients.current()
        try:
            await client.eval(_RELEASE, 1, self.name, self.token)
        except REDIS_ERRORS:
            pass  # it lapses by itself
        finally:
            await self._clients.aclose_current()


class SqliteLease:
    """A lease in the shared SQLite file (one machine)."""

    def __init__(
        self,
        path: Path,
        name: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.name = name
        self.token = secrets.token_hex(16)
        self._ttl_s = ttl_s
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,"
                " until REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10.0, isolation_level=None)

    def _hold(self) -> bool:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT holder, until FROM leases WHERE name = ?", (self.name,)
            ).fetchone()
            now = self._clock()
            held = row is None or row[0] == self.token or float(row[1]) <= now
            if held:
                conn.execute(
                    "INSERT OR REPLACE INTO leases (name, holder, until) VALUES (?, ?, ?)",
                    (self.name, self.token, now + self._ttl_s),
                )
            conn.execute("COMMIT")
            return held
        except sqlite3.Error as exc:
            log.warning("sweeper lease unavailable (%s)", type(exc).__name__)
            return False
        finally:
            conn.close()

    async def __call__(self) -> bool:
        return await asyncio.to_thread(self._hold)  # a local file: a thread is enough

    async def release(self) -> None:
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        conn = self._connect()
        try:
            conn.execute(
                "DELETE FROM leases WHERE name = ? AND holder = ?", (self.name, self.token)
            )
        except sqlite3.Error:
            pass
        finally:
            conn.close()


class Lease(Protocol):
    """What the sweeper holds: `await lease()` (held now?) each pass, `await release()` at
    shutdown. Neither blocks the event loop."""

    async def __call__(self) -> bool: ...

    async def release(self) -> None: ...


def lease_for(url: str, *, prefix: str, ttl_s: float = DEFAULT_TTL_S) -> Lease | None:
    """The sweeper's lease for `shared.url`; None for `memory`."""
    from .shared_open import is_memory, is_redis, shared_sqlite_path

    if is_memory(url):
        return None
    if is_redis(url):
        return RedisLease(url, f"{prefix}lease:sweeper", ttl_s=ttl_s)
    path = shared_sqlite_path(url)
    return None if path is None else SqliteLease(path, "sweeper", ttl_s=ttl_s)

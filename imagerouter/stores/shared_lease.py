"""One sweeper at a time in a fleet: a lease held by one replica, taken over when it lapses.

Every `serve` process runs the sweeper (imagerouter/resume.py `sweep`), which collects the
paid jobs of dead processes; with a lease only its holder runs a pass, so two replicas never
collect the same job at once. The holder renews the lease on every pass; a replica killed
with SIGKILL stops renewing, and after `ttl_s` the next replica to ask takes it over.

- `RedisLease`: `SET name token NX PX ttl`, renewed by a compare-and-expire script.
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

__all__ = ["DEFAULT_TTL_S", "Lease", "RedisLease", "SqliteLease", "lease_for"]

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 180.0  # three sweeper intervals: a live holder always renews in time

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisLease:
    """A lease in Redis. Calling it (awaited) says whether this process holds it now."""

    def __init__(self, url: str, name: str, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        from .shared_redis import redis_client

        self._client = redis_client(url)
        self._renew = self._client.register_script(_RENEW)
        self.name = name
        self.token = secrets.token_hex(16)  # this holder; never a secret of the deployment
        self._ttl_ms = int(ttl_s * 1000)

    def _hold(self) -> bool:
        import redis

        try:
            if self._renew(keys=[self.name], args=[self.token, self._ttl_ms]):
                return True
            return bool(self._client.set(self.name, self.token, nx=True, px=self._ttl_ms))
        except redis.RedisError as exc:  # no Redis, no lease: skip the pass, try again later
            log.warning("sweeper lease unavailable (%s)", type(exc).__name__)
            return False

    async def __call__(self) -> bool:
        return await asyncio.to_thread(self._hold)

    def release(self) -> None:
        import redis

        try:
            if self._client.get(self.name) == self.token:
                self._client.delete(self.name)
        except redis.RedisError:
            pass  # it lapses by itself


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
        return await asyncio.to_thread(self._hold)

    def release(self) -> None:
        conn = self._connect()
        try:
            conn.execute(
                "DELETE FROM leases WHERE name = ? AND holder = ?", (self.name, self.token)
            )
        except sqlite3.Error:
            pass
        finally:
            conn.close()


Lease = RedisLease | SqliteLease


def lease_for(url: str, *, prefix: str, ttl_s: float = DEFAULT_TTL_S) -> Lease | None:
    """The sweeper's lease for `shared.url`; None for `memory`."""
    from .shared_open import is_memory, is_redis, shared_sqlite_path

    if is_memory(url):
        return None
    if is_redis(url):
        return RedisLease(url, f"{prefix}lease:sweeper", ttl_s=ttl_s)
    path = shared_sqlite_path(url)
    return None if path is None else SqliteLease(path, "sweeper", ttl_s=ttl_s)

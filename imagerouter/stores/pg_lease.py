"""The sweeper's lease on a PostgreSQL advisory lock: one sweeper at a time in a fleet.

With `ledger.url: postgresql://...` every replica already talks to one server, so the lease
needs nothing else: `PgLease` holds a session-level `pg_try_advisory_lock` on a connection
of its own. A replica that dies (SIGKILL, a lost machine) loses its connection, and the server
drops the lock with it at once: the next replica to ask takes it, with no TTL to wait out
(unlike the Redis and SQLite leases of shared_lease.py). TCP keepalives (postgres.py
`CONNECT_DEFAULTS`, unless the URL sets its own) let both ends notice a silent peer within
about a minute.

Same call shape as `shared_lease.Lease`: `await lease()` says whether this process holds it
now (taking it if free), `await release()` gives it up. Both run in a worker thread, never
on the event loop. A connection the server dropped is reopened and the lock tried again in
the same call; an unreachable server means "not held" (the pass is skipped, and a warning
logged once per outage).

The lock's key is derived from the lease's name and the ledger's schema (advisory locks are
per database), so fleets whose ledgers are different schemas of one database each have one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from typing import Any

import psycopg

from . import redact_url
from .postgres import conninfo

__all__ = ["PgLease", "lock_key"]

log = logging.getLogger(__name__)


def lock_key(schema: str, name: str) -> int:
    """The advisory lock's int64 key for lease `name` of the ledger in `schema`."""
    digest = hashlib.blake2b(f"imagerouter\0{schema}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PgLease:
    """A lease held as a session advisory lock on a dedicated connection to `url`."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._lock = threading.Lock()  # one hold or release at a time (worker threads)
        self._conn: psycopg.Connection[Any] | None = None
        self._key = 0
        self._held = False
        self._down = False  # an outage was logged; log its end once too

    def __repr__(self) -> str:
        return f"PgLease({redact_url(self.url)!r}, {self.name!r})"

    async def __call__(self) -> bool:
        return await asyncio.to_thread(self._hold)

    async def release(self) -> None:
        """Give the lease up now: closing the connection drops the lock on the server."""
        await asyncio.to_thread(self._release)

    @property
    def held(self) -> bool:
        return self._held

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(conninfo(self.url), autocommit=True)
        try:
            row = conn.execute("SELECT current_schema()").fetchone()
            self._key = lock_key(str(row[0] if row else ""), self.name)
        except BaseException:
            conn.close()
            raise
        return conn

    def _try(self) -> bool:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop()
            self._conn = self._connect()
        if self._held:
            # Still held while the session lives: one round trip proves it does.
            self._conn.execute("SELECT 1")
            return True
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        self._held = bool(row and row[0])
        return self._held

    def _hold(self) -> bool:
        with self._lock:
            try:
                try:
                    held = self._try()
                except psycopg.OperationalError:
                    # The server dropped the session (a restart, pg_terminate_backend): the
                    # lock went with it. Reconnect and try again, once.
                    self._drop()
                    held = self._try()
            except psycopg.Error as exc:
                self._drop()
                if not self._down:
                    log.warning("sweeper lease unavailable (%s); skipping sweeper passes until "
                                "PostgreSQL answers", type(exc).__name__)
                    self._down = True
                return False
            if self._down:
                log.info("sweeper lease: PostgreSQL answers again")
                self._down = False
            return held

    def _release(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._held = False
        if conn is not None:
            # A broken connection holds nothing on the server either.
            with contextlib.suppress(psycopg.Error):
                conn.close()

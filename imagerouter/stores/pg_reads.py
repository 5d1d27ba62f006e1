"""Reads of the PostgreSQL ledger on pooled connections, so they never queue behind writes.

The ledger has one writer connection (`postgres.PgConnection`), guarded by the ledger's lock
and driven by the async writer thread (`aio.py`), which holds it for a whole batch: a
transaction of up to 256 calls, each a few round trips, then the COMMIT. Reads there wait
for all of that. Here they run on a `psycopg_pool.ConnectionPool` (`POOL_SIZE` connections,
opened on the first read, read-only at the server) instead:

- sync reads (`ledger.reading()`: the gateway's job and file look-ups, budget status, the
  CLI's reports) take a pool connection in the calling thread;
- async reads (`await ledger.aio.history()`, `uncollected()`, ... the ledger's read methods)
  run in a small thread pool of the ledger (one thread per pool connection), not on the
  writer thread; they work from any event loop, one after another, as the Router needs.

A read sees committed rows only. So it stays on the writer connection when it must see rows
not yet committed by this caller: inside a write (the writer thread's batch, a nested call),
or in a request whose deferred writes (`ledger_commit.deferred_commits`) are not durable yet
(read-your-writes). Budget reservations are writes: they keep their advisory lock on the
writer connection. A pooled connection the server dropped is replaced and the read retried
once (a read is one autocommit statement: running it again is harmless).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import LedgerUnavailableError
from ..ledger import Ledger
from . import redact_url
from .aio import AsyncLedger, LedgerClosedError
from .postgres import (
    Row,
    _as_sqlite_error,
    _Cursor,
    _param,
    _row_factory,
    conninfo,
    translate,
    unavailable,
)

if TYPE_CHECKING:
    from .postgres import PgLedger

__all__ = ["POOL_SIZE", "PgAsyncLedger", "PgReader", "ReadPool"]

P = ParamSpec("P")
T = TypeVar("T")

POOL_SIZE = 4  # connections (and threads) for reads, per ledger: a replica's reads are short
# How long a read waits for a pool connection: long enough for a burst, short enough that a
# server that went away is reported rather than waited for (the pool keeps reconnecting).
_WAIT_S = 3.0


def _no_upserts(table: str) -> Sequence[str]:
    raise sqlite3.ProgrammingError(f"postgresql: a read connection does not write ({table})")


def _read_only(conn: psycopg.Connection[Any]) -> None:
    # A write through `reading()` would bypass the ledger's transactions and write-ahead
    # order: the server refuses it here instead of committing it silently.
    conn.execute("SET default_transaction_read_only = on")


class PgReader:
    """One pooled connection, as the sqlite3 subset the ledger's readers use (`execute`)."""

    def __init__(
        self, pool: ConnectionPool[psycopg.Connection[Row]], wait_s: float, url: str
    ) -> None:
        self._pool = pool
        self._wait_s = wait_s
        self._url = url
        self._conn: psycopg.Connection[Row] | None = None
        self.row_factory: object = None  # set by callers that expect sqlite3; rows are Row

    def _get(self) -> psycopg.Connection[Row]:
        if self._conn is None:
            try:
                self._conn = self._pool.getconn(timeout=self._wait_s)
            except PoolTimeout:
                raise LedgerUnavailableError(
                    f"the ledger at {redact_url(self._url)} is unavailable: no connection "
                    f"within {self._wait_s:g}s"
                ) from None
        return self._conn

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Cursor:
        statement = translate(sql, _no_upserts, params=bool(parameters))
        if not statement:
            return _Cursor(None)
        args = [_param(p) for p in parameters]
        for attempt in (1, 2):
            conn = self._get()
            try:
                return _Cursor(conn.execute(statement, args) if args else conn.execute(statement))
            except psycopg.Error as exc:
                if not conn.broken:
                    raise _as_sqlite_error(exc) from exc
                if attempt == 2:
                    raise unavailable(self._url, exc) from exc
                self.give_back()  # dropped by the server: the pool discards it
        raise AssertionError("unreachable")

    def give_back(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._pool.putconn(conn)


class ReadPool:
    """The pool of read connections of one ledger, and the threads its async reads run in.
    Opened lazily, and again in a forked child (a pool's threads do not survive a fork)."""

    def __init__(self, url: str, *, size: int = POOL_SIZE, wait_s: float = _WAIT_S) -> None:
        self.url = url
        self.size = size
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._pid = 0
        self._pool: ConnectionPool[psycopg.Connection[Row]] | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._closed = False

    def _open(self) -> tuple[ConnectionPool[psycopg.Connection[Row]], ThreadPoolExecutor]:
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("postgresql: the ledger is closed")
            if self._pool is None or self._threads is None or self._pid != os.getpid():
                pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
                    conninfo(self.url),
                    min_size=1,
                    max_size=self.size,
                    kwargs={"autocommit": True, "row_factory": _row_factory},
                    configure=_read_only,
                    timeout=self.wait_s,
                    name="imagerouter-ledger-reads",
                    open=False,
                )
                pool.open(wait=False)  # connects in the background; a read waits if need be
                self._pool = pool
                self._threads = ThreadPoolExecutor(
                    self.size, thread_name_prefix="imagerouter-ledger-read"
                )
                self._pid = os.getpid()
            return self._pool, self._threads

    @contextmanager
    def reader(self) -> Iterator[PgReader]:
        pool, _ = self._open()
        reader = PgReader(pool, self.wait_s, self.url)
        try:
            yield reader
        finally:
            reader.give_back()

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` in one of the read threads, in a copy of the caller's contextvars."""
        if self._closed:
            raise LedgerClosedError(f"the ledger at {redact_url(self.url)} is closed")
        _, threads = self._open()
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            threads, functools.partial(context.run, fn)
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            threads, self._threads = self._threads, None
            mine = self._pid == os.getpid()
        if threads is not None and mine:
            threads.shutdown(wait=True)
        if pool is not None and mine:
            pool.close()


def _pooled(
    fn: Callable[Concatenate[Ledger, P], T],
) -> Callable[Concatenate[AsyncLedger, P], Coroutine[Any, Any, T]]:
    """An async read of the ledger on the read pool (or, when it must see this caller's
    uncommitted writes, queued to the writer thread like any other call)."""
    name = fn.__name__

    async def method(self: AsyncLedger, /, *args: P.args, **kwargs: P.kwargs) -> T:
        ledger = cast("PgLedger", self.sync)
        bound: Callable[P, T] = getattr(ledger, name)
        if not ledger.reads_pooled():
            return await self.call(bound, *args, **kwargs)
        return await ledger.reads.run(functools.partial(bound, *args, **kwargs))

    method.__name__ = name
    method.__doc__ = fn.__doc__
    return method


class PgAsyncLedger(AsyncLedger):
    """`AsyncLedger` whose reads go to the read pool; writes still queue to the writer."""

    committed_usd = _pooled(Ledger.committed_usd)
    unknown_tasks = _pooled(Ledger.unknown_tasks)
    open_requests = _pooled(Ledger.open_requests)
    orphan_reservations = _pooled(Ledger.orphan_reservations)
    request_owners = _pooled(Ledger.request_owners)
    uncollected = _pooled(Ledger.uncollected)
    watching = _pooled(Ledger.watching)
    spend = _pooled(Ledger.spend)
    history = _pooled(Ledger.history)
    request_detail = _pooled(Ledger.request_detail)
    latencies = _pooled(Ledger.latencies)

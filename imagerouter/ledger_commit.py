"""Group commit: concurrent ledger writers share one transaction and one fsync.

With `synchronous=FULL` every COMMIT is an fsync, and each of a job's ledger writes must be
durable before the job goes on (the task row before the create is sent, the image row after
its file is renamed). Writers in other threads, arriving while one transaction is open or
being committed, are the next batch: each runs its statements in a SAVEPOINT of the open
transaction, and the last writer in (no other one waiting for the connection) commits for
all of them. Every writer returns only after the COMMIT that holds its rows, so each call is
as durable on return as its own transaction would have made it; a writer whose statements
fail rolls back only its savepoint. A lone writer (the common case) commits at once: it pays
two SAVEPOINT statements and no thread hand-off.

Deferred commits (`deferred_commits()`, which the Router opens around each request): a write
made inside it returns once its statements are in the open transaction, without waiting for
an fsync, and is recorded in the request's `PendingWrites`. The request must then call
`make_durable(pending)` before anything leaves the process: the Router does it before every
HTTP request it sends (an httpx request hook) and when the request ends. So a request's
ledger rows are on disk before its paid create, its first poll and its download, and before
it returns, as with one transaction per write; but the writes between two of those points
share one fsync (about 4 per image instead of 11). A crash loses only writes that no
request, poll or download has yet followed, i.e. states nothing outside the process depends on.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["GroupCommit", "PendingWrites", "current_pending", "deferred_commits"]

# How often a writer waiting for its batch checks that someone is still going to commit it
# (only a writer interrupted on its way in can leave a batch without its committer).
_ORPHAN_CHECK_S = 0.05


class _Batch:
    def __init__(self, owner: GroupCommit) -> None:
        self.owner = owner
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.writes = 0
        self.waiters = 0  # writers that wait for this batch's COMMIT (not deferred ones)


class PendingWrites:
    """The transactions holding one request's deferred writes, not yet known to be durable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: list[_Batch] = []
        self._closed = False

    def _add(self, batch: _Batch) -> bool:
        """Record a deferred write's batch; False once the request has ended (the write
        must then be committed like any other)."""
        with self._lock:
            if self._closed:
                return False
            if batch not in self._batches:
                self._batches.append(batch)
            return True

    def durable(self) -> bool:
        """Every deferred write so far is committed (cheap: no lock, no I/O)."""
        return all(b.done.is_set() and b.error is None for b in self._batches)

    async def make_durable_async(self, *, final: bool = False) -> None:
        """`make_durable` from an event loop: the ledger's writer thread commits (no thread
        hop of our own); only what that did not settle goes to a worker thread."""
        with self._lock:
            owners = {b.owner for b in self._batches if not b.done.is_set()}
        for owner in owners:
            if owner.sync_point is not None:
                await owner.sync_point()
        with self._lock:
            settled = all(b.done.is_set() for b in self._batches)
        if settled:
            self.make_durable(final=final)  # no waiting left: raises a failed COMMIT's error
        else:
            await asyncio.to_thread(self.make_durable, final=final)

    def make_durable(self, *, final: bool = False) -> None:
        """Commit every transaction holding this request's writes (blocking: an fsync).
        Raises what a failed COMMIT raised: those writes are not on disk. `final`: later
        writes of this request commit on their own."""
        with self._lock:
            batches, self._batches = self._batches, []
            self._closed = self._closed or final
        for batch in batches:
            if not batch.done.is_set():
                with batch.owner._lock:
                    if batch.owner._batch is batch:
                        batch.owner._commit(batch)
            batch.done.wait()
            if batch.error is not None:
                raise batch.error


_PENDING: ContextVar[PendingWrites | None] = ContextVar("imagerouter_ledger_pending", default=None)


def current_pending() -> PendingWrites | None:
    """The deferred writes of the request running in this context, if it defers."""
    return _PENDING.get()


@contextmanager
def deferred_commits() -> Iterator[PendingWrites]:
    """Writes in this context (and in threads started from it) defer their commit."""
    pending = PendingWrites()
    token = _PENDING.set(pending)
    try:
        yield pending
    finally:
        _PENDING.reset(token)


class GroupCommit:
    """Writes to `conn`, guarded by `lock` (the connection's lock, shared with readers)."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self._conn = conn
        self._lock = lock
        self._counts = threading.Lock()
        self._arriving = 0  # writers waiting for `lock` to join the open batch
        self._batch: _Batch | None = None
        self._local = threading.local()
        self.commits = 0  # transactions committed (benchmarks and tests read it)
        self.writes = 0  # writes that made it into a committed transaction
        # Set by the ledger's async API (stores/aio.py): awaits a COMMIT of the open batch on
        # its writer thread, so an event loop's barrier needs no thread hop of its own.
        self.sync_point: Callable[[], Awaitable[None]] | None = None

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write: its statements are committed, durably, when the block has returned."""
        depth: int = getattr(self._local, "depth", 0)
        if depth:
            # A write inside a write on this thread: a savepoint of the same transaction.
            with self._savepoint(depth):
                yield self._conn
            return
        with self._counts:
            self._arriving += 1
        try:
            self._lock.acquire()
        except BaseException:
            with self._counts:
                self._arriving -= 1
            raise
        failure: BaseException | None = None
        try:
            with self._counts:
                self._arriving -= 1
            if self._batch is None:
                self._conn.execute("BEGIN IMMEDIATE")
                self._batch = _Batch(self)
            batch = self._batch
            self._local.depth = 1
            try:
                with self._savepoint(1):
                    yield self._conn
            except BaseException as exc:
                failure = exc
                if not self._conn.in_transaction:
                    # SQLite rolled the whole transaction back (disk full, I/O error): the
                    # batch's earlier writes are gone too.
                    self._finish(batch, exc)
            finally:
                self._local.depth = 0
            deferred = False
            if failure is None:
                batch.writes += 1
                pending = _PENDING.get()
                deferred = pending is not None and self._batch is batch and pending._add(batch)
                if not deferred:
                    batch.waiters += 1
            # The last writer in commits, unless it defers and nobody waits for this batch
            # (an empty batch, left by a failed write, is closed at once).
            if self._batch is batch and self._arriving == 0 and (batch.waiters or not batch.writes):
                self._commit(batch)
        finally:
            self._lock.release()
        if failure is not None:
            raise failure
        if not deferred:
            self._wait(batch)

    @contextmanager
    def _savepoint(self, depth: int) -> Iterator[None]:
        name = f"ledger_write_{depth}"
        self._conn.execute(f"SAVEPOINT {name}")
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute(f"ROLLBACK TO {name}")
                self._conn.execute(f"RELEASE {name}")
            raise
        else:
            self._conn.execute(f"RELEASE {name}")
        finally:
            self._local.depth = depth

    def _commit(self, batch: _Batch) -> None:
        """COMMIT the open batch; the caller holds the lock."""
        try:
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._finish(batch, exc)
        else:
            self.commits += 1
            self.writes += batch.writes
            self._finish(batch, None)

    def _finish(self, batch: _Batch, error: BaseException | None) -> None:
        if self._batch is batch:
            self._batch = None
        batch.error = error
        batch.done.set()

    def _wait(self, batch: _Batch) -> None:
        while not batch.done.wait(_ORPHAN_CHECK_S):
            if self._arriving == 0:
                with self._lock:
                    if self._batch is batch:
                        self._commit(batch)
        if batch.error is not None:
            raise batch.error

    def run_batch(
        self,
        calls: Sequence[Callable[[], object]],
        pending: Sequence[PendingWrites | None] = (),
        barriers: Sequence[bool] = (),
    ) -> list[tuple[bool, object]]:
        """Run `calls` (ledger writes and reads) in one transaction and commit it once.

        The single writer thread of `imagerouter.stores` uses this: many coroutines' writes,
        queued while the previous COMMIT was under way, share one fsync. Each call's writes
        are savepoints of the transaction (its own failure rolls back only its own), so a
        call's result is (True, value) or (False, exception); when the COMMIT fails, every
        call that wrote is reported failed with that error. An open batch of deferred writes
        (`deferred_commits`) is joined and committed with it.

        `pending[i]`: the deferred writes of call i's request, if it defers. When every call
        that wrote defers, the transaction is left open (each request's `make_durable`
        commits it before anything leaves the process), exactly as `write()` defers.
        `barriers[i]`: call i writes nothing and only asks for the COMMIT (not counted)."""
        results: list[tuple[bool, object]] = []
        with self._lock:
            try:
                if self._batch is None:
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._batch = _Batch(self)
            except Exception as exc:
                return [(False, exc) for _ in calls]
            batch = self._batch
            self._local.depth = 1
            try:
                for n, call in enumerate(calls):
                    try:
                        results.append((True, call()))
                    except Exception as exc:
                        results.append((False, exc))
                        if not self._conn.in_transaction:
                            # The whole transaction was rolled back (disk full, I/O error,
                            # a dropped server): nothing of this batch is on disk.
                            self._finish(batch, exc)
                            results = [(False, exc) for _ in results]
                            results += [(False, exc) for _ in calls[n + 1 :]]
                            return results
            finally:
                self._local.depth = 0
            barrier = [n < len(barriers) and barriers[n] for n in range(len(results))]
            batch.writes += sum(1 for n, (ok, _) in enumerate(results) if ok and not barrier[n])
            waiting = False
            for n, (ok, _) in enumerate(results):
                owner = pending[n] if n < len(pending) else None
                if ok and (owner is None or not owner._add(batch)):
                    waiting = True
            if self._batch is batch and (waiting or not batch.writes):
                self._commit(batch)
        if batch.error is not None:
            error = batch.error
            return [(False, error) for _ in results]
        return results

    def flush(self) -> None:
        """Commit the open batch now, if there is one (before closing the connection)."""
        with self._lock:
            if self._batch is not None:
                self._commit(self._batch)

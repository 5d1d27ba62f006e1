"""The async ledger: one writer thread per ledger, whose queue batches every waiting call.

Before this, each ledger write from the event loop was an `asyncio.to_thread` hop and a
transaction of its own (or a group commit when threads happened to collide). Here every
call made from a coroutine (`await ledger.aio.task_accepted(...)`) is queued to a single
writer thread; the thread takes everything queued and runs it in ONE transaction
(`GroupCommit.run_batch`), each call in a savepoint of its own, then commits once. So with
1,000 jobs in flight the writes queued during one fsync share the next one, and the event
loop never waits on SQLite.

Promises kept, per call: the awaited call returns only after the COMMIT holding its writes
(an accepted task is on disk before the first poll; an image's row after its file is
renamed) -- or, inside a request that defers its commits (`ledger_commit.deferred_commits`,
which the Router opens around each request), once its writes are in the open transaction,
which that request's `make_durable` commits before its next HTTP request and at its end.
A call that fails rolls back its own savepoint only; a failed COMMIT fails every call of
the batch. Budget reservations run inside the batch's immediate transaction, which
holds the database's write lock (SQLite) or the reservations' advisory lock (PostgreSQL,
`postgres.py`), so concurrent reservations still never overshoot. Each call runs in a copy
of its caller's contextvars (budget scopes, deferred-commit markers) as `to_thread` did.

The same class serves both backends: the backend is the sync `Ledger` it wraps (SQLite,
`imagerouter.ledger.Ledger`, or PostgreSQL, `imagerouter.stores.postgres.PgLedger`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from ..ledger_commit import current_pending

if TYPE_CHECKING:
    from ..ledger import Ledger

__all__ = ["AsyncLedger", "LedgerClosedError"]

P = ParamSpec("P")
T = TypeVar("T")

# How many queued calls one transaction takes at most: bounds how long one batch holds the
# write lock (other processes, sync callers) while still coalescing a 1,000-job burst.
MAX_BATCH = 256


class LedgerClosedError(RuntimeError):
    """A call reached a ledger that was closed."""


class _Item:
    __slots__ = ("context", "defer", "fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[[], object],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        *,
        defer: bool = True,
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.future = future
        self.context = contextvars.copy_context()
        self.defer = defer  # False: this item's batch is committed before it returns


def _nothing() -> None:
    return None


def _deliver(future: asyncio.Future[Any], ok: bool, value: object) -> None:
    if future.cancelled():  # the caller went away; the call itself still ran
        return
    if ok:
        future.set_result(value)
    else:
        assert isinstance(value, BaseException)
        future.set_exception(value)


def _deliver_all(outcomes: list[tuple[asyncio.Future[Any], bool, object]]) -> None:
    for future, ok, value in outcomes:
        _deliver(future, ok, value)


def _async(
    fn: Callable[Concatenate[Ledger, P], T],
) -> Callable[Concatenate[AsyncLedger, P], Coroutine[Any, Any, T]]:
    """An async twin of a `Ledger` method (same signature), run on the writer thread. The
    method is looked up on the wrapped ledger, so a backend's override is the one called."""
    name = fn.__name__

    async def method(self: AsyncLedger, /, *args: P.args, **kwargs: P.kwargs) -> T:
        bound: Callable[P, T] = getattr(self.sync, name)
        return await self.call(bound, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = fn.__doc__
    return method


def _methods() -> type[Ledger]:
    from ..ledger import Ledger

    return Ledger


_L = _methods()


class AsyncLedger:
    """The async API of one sync ledger (`Ledger.aio` makes and keeps it)."""

    def __init__(self, ledger: Ledger) -> None:
        self.sync = ledger
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # transactions the writer committed (benchmarks and tests read it)
        self.calls = 0
        # A/B switch for benchmarks only: IMAGEROUTER_LEDGER_WRITER=to_thread runs each call
        # as before this module (one asyncio.to_thread hop each, group commit between threads).
        self._to_thread = os.environ.get("IMAGEROUTER_LEDGER_WRITER") == "to_thread"
        if not self._to_thread:
            ledger._writes.sync_point = self.sync_point

    def __repr__(self) -> str:
        return f"AsyncLedger({self.sync!r})"

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` on the writer thread, inside the next batch's
        transaction; return its result once that transaction is committed (in a request that
        defers its commits: once its writes are in the open transaction). `fn` may use the
        ledger's sync API (its writes become savepoints of the batch) but must not block on
        anything else: every other ledger call waits behind it."""
        if self._to_thread:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return await self._submit(functools.partial(fn, *args, **kwargs), defer=True)

    async def sync_point(self) -> None:
        """Return once everything queued before it, and any open deferred batch, is
        committed (a request's commit barrier, `PendingWrites.make_durable_async`)."""
        await self._submit(_nothing, defer=False)

    async def _submit(self, fn: Callable[[], T], *, defer: bool) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        item = _Item(fn, loop, future, defer=defer)
        with self._cond:
            if self._closed:
                raise LedgerClosedError(f"{self.sync!r} is closed")
            self._queue.append(item)
            # Not alive: this process was forked after the thread started (only the forking
            # thread survives a fork), so start another.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="imagerouter-ledger-writer", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return await future

    def close(self) -> None:
        """Run what is queued, then stop the writer thread. Idempotent."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    self._thread = None
                    return
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            results: list[tuple[bool, object]]
            try:
                results = self.sync._writes.run_batch(
                    [functools.partial(item.context.run, item.fn) for item in batch],
                    [item.context.run(current_pending) if item.defer else None for item in batch],
                    [item.fn is _nothing for item in batch],
                )
            except BaseException as exc:  # every waiter must hear of it
                results = [(False, exc)] * len(batch)
            self.batches += 1
            self.calls += len(batch)
            # One wake-up per event loop, not one per call.
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, object]]]
            by_loop = {}
            for item, (ok, value) in zip(batch, results, strict=True):
                by_loop.setdefault(item.loop, []).append((item.future, ok, value))
            for loop, outcomes in by_loop.items():
                # RuntimeError: that event loop is closed, nobody is waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_deliver_all, outcomes)

    # --- the Ledger's API, async (signatures and docs from imagerouter.ledger.Ledger) -----

    begin_request = _async(_L.begin_request)
    begin_attempt = _async(_L.begin_attempt)
    task_submitting = _async(_L.task_submitting)
    task_accepted = _async(_L.task_accepted)
    task_finished = _async(_L.task_finished)
    task_checked = _async(_L.task_checked)
    image_saved = _async(_L.image_saved)
    image_moved = _async(_L.image_moved)
    end_attempt = _async(_L.end_attempt)
    end_request = _async(_L.end_request)
    interrupt_request = _async(_L.interrupt_request)
    close_request = _async(_L.close_request)
    settle_reservations = _async(_L.settle_reservations)
    reserve = _async(_L.reserve)
    settle = _async(_L.settle)
    release = _async(_L.release)
    committed_usd = _async(_L.committed_usd)
    unknown_tasks = _async(_L.unknown_tasks)
    open_requests = _async(_L.open_requests)
    orphan_reservations = _async(_L.orphan_reservations)
    request_owners = _async(_L.request_owners)
    uncollected = _async(_L.uncollected)
    watching = _async(_L.watching)
    spend = _async(_L.spend)
    history = _async(_L.history)
    request_detail = _async(_L.request_detail)
    latencies = _async(_L.latencies)

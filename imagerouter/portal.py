"""A long-lived event loop in a background thread, for the Router's sync twins.

`asyncio.run` per sync call would build a new loop, a new HTTP client, a new SSL context and a
new TCP + TLS connection for every image. The portal keeps one loop (and so one client and its
connection pool) for the Router's lifetime; any number of threads may `call()` into it at once.
This is the pattern of anyio's blocking portal, written out because anyio cancels by scope
(every `await` in a cleanup block is cancelled again), while the routing code's cleanup after a
Ctrl-C relies on asyncio's one-shot cancellation, as `asyncio.run` delivers it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["Portal"]

_T = TypeVar("_T")
_STOP_TIMEOUT_S = 10.0  # a close() never hangs the interpreter on a stuck job
# A signal that lands just before the waiting thread blocks in its lock is only noticed at the
# next wake-up, so the wait wakes this often to let a Ctrl-C through (one press, not two).
_WAKE_S = 0.2


class Portal:
    """An event loop running in a daemon thread, started on first use."""

    def __init__(self, name: str = "imagerouter-portal") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The portal's loop while it runs (None before the first call and after close)."""
        return self._loop

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None:
                return self._loop
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            # Daemon: a process that forgets close() still exits; atexit closes us first.
            thread = threading.Thread(target=run, name=self._name, daemon=True)
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread
            return loop

    def call(self, make: Callable[[], Awaitable[_T]]) -> _T:
        """Run `make()` on the portal's loop and wait for its result, from any thread.

        If the waiting thread is interrupted (Ctrl-C), the job is cancelled as `asyncio.run`
        would cancel it, and its cleanup (ledger records of what was paid) is waited for
        before the interrupt propagates.
        """
        loop = self._start()
        finished = threading.Event()
        interrupted = threading.Event()
        running: list[asyncio.Task[Any]] = []

        async def job() -> _T:
            try:
                if interrupted.is_set():
                    raise asyncio.CancelledError
                task = asyncio.current_task()
                if task is not None:
                    running.append(task)
                return await make()
            finally:
                finished.set()

        def cancel() -> None:
            for task in running:
                task.cancel()

        submitted = False
        try:
            # Inside the try: an interrupt may land on any line from here on.
            future = asyncio.run_coroutine_threadsafe(job(), loop)
            submitted = True
            while True:
                try:
                    return future.result(timeout=_WAKE_S)
                except TimeoutError:
                    if future.done():
                        raise  # the job's own TimeoutError, not the wait's
        except BaseException:
            interrupted.set()
            loop.call_soon_threadsafe(cancel)
            if submitted or running:
                finished.wait(_STOP_TIMEOUT_S)
            raise

    def close(self, cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run `cleanup()` on the loop, cancel what still runs there, stop and join it.
        Idempotent; from the portal's own thread it only schedules the stop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            try:
                if cleanup is not None:
                    await cleanup()
            finally:
                current = asyncio.current_task()
                tasks = [task for task in asyncio.all_tasks() if task is not current]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await loop.shutdown_asyncgens()

        if threading.current_thread() is thread:
            # Closed from a job on the loop itself (or garbage-collected there): it cannot
            # wait for itself, so the loop stops once this job and the shutdown are done.
            def stop(_: object) -> None:
                loop.stop()

            loop.create_task(shutdown()).add_done_callback(stop)
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(_STOP_TIMEOUT_S)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                pass  # a job that ignores cancellation: stop the loop under it anyway
            finally:
                loop.call_soon_threadsafe(loop.stop)
        thread.join(_STOP_TIMEOUT_S)
        if not thread.is_alive():
            loop.close()

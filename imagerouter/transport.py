"""The Router's HTTP plumbing: one client per event loop, and a concurrency-limited transport.

`LoopClients`: an `httpx.AsyncClient` and its pooled connections belong to the event loop that
first used them (closing them on another loop, or after that loop closed, fails with "Event loop
is closed"). So a Router keeps one client per running loop, reused by every call on that loop,
and closes each on its own loop: when the Router is closed, or when the loop itself ends
(`asyncio.run` and pytest cancel a loop's remaining tasks before closing it; a keeper task
closes the client then).

`LimitedTransport` lets at most `limit` requests into httpx's connection pool at once.

httpcore's pool scans every queued request against every connection whenever a request starts
or ends, so with 1,000 jobs in flight on a few hundred connections the event loop spends its
time in the pool (and requests hit `PoolTimeout`). Waiting on a semaphore in front of the pool
costs O(1). Measured in benchmarks/bench_inflight.py (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["LimitedTransport", "LoopClient", "LoopClients"]


@dataclass
class LoopClient:
    """The HTTP client of one event loop, and what was built on it (provider clients)."""

    http: httpx.AsyncClient
    built: dict[str, Any] = field(default_factory=dict)
    keeper: asyncio.Task[None] | None = None


class LoopClients:
    """One `LoopClient` per event loop, made by `factory` on the loop's first call."""

    def __init__(self, factory: Callable[[], httpx.AsyncClient]) -> None:
        self._factory = factory
        self._lock = threading.Lock()  # several loops (threads) may ask at once
        self._by_loop: dict[asyncio.AbstractEventLoop, LoopClient] = {}

    def current(self) -> LoopClient:
        """The running loop's client (made now if it has none)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._by_loop.get(loop)
            if entry is not None:
                return entry
            # A loop that closed without cancelling its tasks took its sockets with it.
            for dead in [other for other in self._by_loop if other.is_closed()]:
                del self._by_loop[dead]
            entry = LoopClient(self._factory())
            self._by_loop[loop] = entry
        entry.keeper = loop.create_task(self._keep(loop, entry), name="imagerouter-http")
        return entry

    async def _keep(self, loop: asyncio.AbstractEventLoop, entry: LoopClient) -> None:
        try:
            await loop.create_future()  # until cancelled: by close, or by the loop's end
        except asyncio.CancelledError:
            await entry.http.aclose()
            raise
        finally:
            # Also on GeneratorExit (a loop closed with this task still pending): nothing can
            # be awaited then, and the dead loop's sockets go with it.
            with self._lock:
                if self._by_loop.get(loop) is entry:
                    del self._by_loop[loop]

    async def aclose_current(self) -> None:
        """Close the running loop's client now (a no-op if it has none)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._by_loop.pop(loop, None)
        if entry is not None:
            await _close(entry)

    def close_all(self) -> None:
        """Close every loop's client on its own loop, from any thread: at once where the loop
        is idle, as soon as it next runs where it is running. Loops already closed are dropped."""
        with self._lock:
            entries, self._by_loop = self._by_loop, {}
        for loop, entry in entries.items():
            if loop.is_closed():
                continue
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(_close(entry), loop)
            else:
                loop.run_until_complete(_close(entry))


async def _close(entry: LoopClient) -> None:
    # A keeper cancelled before its first step never runs its `finally`: close here too
    # (closing an httpx client twice is a no-op).
    if entry.keeper is not None and entry.keeper is not asyncio.current_task():
        entry.keeper.cancel()
        await asyncio.gather(entry.keeper, return_exceptions=True)
    await entry.http.aclose()


class LimitedTransport(httpx.AsyncBaseTransport):
    def __init__(self, limit: int = 64) -> None:
        self._inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        )
        self._slots = asyncio.Semaphore(limit)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._slots.acquire()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._slots.release()
            raise
        # The slot is held until the body is closed, so a streamed download counts too.
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Releasing(response.stream, self._slots.release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Releasing(httpx.AsyncByteStream):
    """A response body that frees its transport slot when closed."""

    def __init__(self, stream: Any, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._release is not None:
                self._release()
                self._release = None

"""An HTTP transport that lets at most `limit` requests into httpx's connection pool at once.

httpcore's pool scans every queued request against every connection whenever a request starts
or ends, so with 1,000 jobs in flight on a few hundred connections the event loop spends its
time in the pool (and requests hit `PoolTimeout`). Waiting on a semaphore in front of the pool
costs O(1). Measured in benchmarks/bench_inflight.py (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

__all__ = ["LimitedTransport"]


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

"""A bound on request-body bytes held at once, across all requests (`gateway.max_inflight_bytes`).

`max_body_bytes` caps one body; twenty concurrent 55 MB uploads would still hold over a
gigabyte. Each request takes its share from one pool before holding the bytes: its declared
`Content-Length` at once (so an oversized wave is refused before it is read), and, for a
chunked body, each chunk as it arrives. Past the pool's size the request gets a 503 with
`Retry-After`: nothing was sent to a provider, so a retry is safe. The share is given back
when the request ends (or, for a job that keeps its upload, when the job ends).

All of it runs on the server's event loop, so no lock is needed.
"""

from __future__ import annotations

from .errors import ApiError

__all__ = ["RETRY_AFTER_S", "BodyShare", "InflightBytes", "overloaded"]

RETRY_AFTER_S = 2


class InflightBytes:
    """The pool: bytes held now, and the most it may hold."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def share(self) -> BodyShare:
        return BodyShare(self)

    def _take(self, count: int) -> None:
        if count > 0 and self.held + count > self.limit:
            raise overloaded(self.limit)
        self.held += count

    def _give_back(self, count: int) -> None:
        self.held = max(0, self.held - count)


class BodyShare:
    """One request's part of the pool. `release()` is safe to call more than once."""

    def __init__(self, pool: InflightBytes) -> None:
        self._pool = pool
        self.held = 0

    def take(self, count: int) -> None:
        """Hold `count` more bytes, or raise the 503 (holding nothing more)."""
        self._pool._take(count)
        self.held += count

    def handover(self) -> BodyShare:
        """Move what is held to a new share (a job that keeps the upload past the request)."""
        moved = BodyShare(self._pool)
        moved.held, self.held = self.held, 0
        return moved

    def release(self) -> None:
        self._pool._give_back(self.held)
        self.held = 0


def overloaded(limit: int) -> ApiError:
    return ApiError(
        503,
        f"The gateway is holding as many request bodies as it may ({limit} bytes, "
        "gateway.max_inflight_bytes); nothing was sent to a provider. Retry shortly.",
        type="server_error",
        code="server_overloaded",
        # Unlike other 5xx here, a retry is safe: the client may (and should) retry.
        headers={"retry-after": str(RETRY_AFTER_S), "x-should-retry": "true"},
    )

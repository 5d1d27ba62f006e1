"""The gateway's access log, with query strings redacted.

uvicorn's access log prints the path with its query string, so a client that sends its key as
`?api_key=...` has it written in plain text. `imagerouter serve` turns uvicorn's access log off
and `AccessLog` writes one line per request to the `imagerouter.gateway.access` logger instead:
`127.0.0.1:50312 - "POST /v1/images/generations?[redacted] HTTP/1.1" 200`. For an app served
by another uvicorn, `redact_uvicorn_access_log()` (called by `create_app`) rewrites uvicorn's
own access lines the same way.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..redact import REDACTED

__all__ = ["ACCESS_LOGGER", "AccessLog", "redact_uvicorn_access_log", "redacted_target"]

ACCESS_LOGGER = "imagerouter.gateway.access"
_log = logging.getLogger(ACCESS_LOGGER)


def redacted_target(path: str, query: bytes | str) -> str:
    """The request target as logged: the path, and `?[redacted]` in place of any query."""
    # quote(): a path with control characters or line breaks cannot forge a log line.
    safe = quote(path, safe="/:@!$&'()*+,;=-._~%")[:200]
    return f"{safe}?{REDACTED}" if query else safe


class AccessLog:
    """ASGI middleware: one INFO line per request once its status is known."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                client = scope.get("client")
                who = f"{client[0]}:{client[1]}" if client else "-"
                _log.info('%s - "%s %s HTTP/%s" %d', who, scope["method"],
                          redacted_target(scope["path"], scope.get("query_string", b"")),
                          scope.get("http_version", "1.1"), message["status"])
            await send(message)

        await self.app(scope, receive, logged_send)


class _QueryRedaction(logging.Filter):
    """Rewrites uvicorn's access record `(client, method, path?query, version, status)`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, sep, query = args[2].partition("?")
            record.args = (args[0], args[1], redacted_target(path, query if sep else ""),
                           *args[3:])
        return True


_FILTER = _QueryRedaction()


def redact_uvicorn_access_log() -> None:
    """Attach the query redaction to uvicorn's access logger (once)."""
    logger = logging.getLogger("uvicorn.access")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)

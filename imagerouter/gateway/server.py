"""Serving the gateway with uvicorn: the listening socket, read deadlines, and the config.

- `bind(host, port)` opens the listening socket first, so a port in use is one clear error
  before anything is printed or started (and no other process can take the port between a
  check and uvicorn's own bind).
- uvicorn times out idle keep-alive connections but never a request being read: a client that
  opens a connection and sends half a header line holds it for ever. `deadline_protocol`
  returns uvicorn's h11 protocol with two deadlines: from the connection opening (or the last
  response ending) to the end of the request's headers, `gateway.header_timeout_s`; from
  there to the end of its body, `gateway.body_timeout_s`. Past one, the connection is closed;
  nothing was handed to a route, so nothing was paid for. While a route runs there is no
  deadline (a synchronous job may take minutes).
- `server_config` turns uvicorn's access log off: `AccessLog` (access_log.py) logs each
  request with its query string redacted; `show_access_log()` prints those lines on stderr
  as uvicorn's did.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import TYPE_CHECKING, Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .access_log import ACCESS_LOGGER

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from ..config import GatewaySettings

__all__ = ["bind", "deadline_protocol", "server_config", "show_access_log"]

KEEP_ALIVE_S = 5  # uvicorn's default, stated: an idle keep-alive connection is closed after it


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one). Raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does; on Linux this never allows two servers on one listening port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class _DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose headers or body arrive too slowly."""

    header_timeout_s = 10.0
    body_timeout_s = 60.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Arm the deadline of the phase the client is in: sending headers or a body."""
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self._phase:
            return
        self._cancel()
        self._phase = phase
        if phase is not None:
            timeout = self.header_timeout_s if phase == "headers" else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout, self._expired)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection that sent its request %s too slowly",
                             self._phase)
            # A route waiting for the body sees a disconnect and answers nobody.
            self.transport.close()


def deadline_protocol(header_timeout_s: float, body_timeout_s: float) -> type[H11Protocol]:
    """The protocol class to give uvicorn (`uvicorn.Config(http=...)`)."""
    return type("GatewayH11Protocol", (_DeadlineH11Protocol,),
                {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s})


def server_config(
    app: ASGIApp, settings: GatewaySettings, **options: Any
) -> uvicorn.Config:
    """uvicorn's config for the gateway; `options` (host, port, log_level, ...) pass through."""
    options.setdefault("lifespan", "on")
    options.setdefault("log_level", "info")
    return uvicorn.Config(
        app,
        http=deadline_protocol(settings.header_timeout_s, settings.body_timeout_s),
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        **options,
    )


def show_access_log() -> None:
    """Print the gateway's (redacted) access lines on stderr, once, like uvicorn's own."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # with -v the root handler would print each line twice

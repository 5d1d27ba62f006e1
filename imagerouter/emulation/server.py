"""Serving an emulator over real sockets, and dropping a connection on purpose.

`EmulatorServer` runs uvicorn in a background thread on 127.0.0.1 and a free port, so tests
and `imagerouter --emulate` talk real HTTP. `drop_connection` closes a client's TCP connection
without answering, which is how a "reset" fault looks from the client side.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

__all__ = ["EmulatorServer", "drop_connection"]

_START_TIMEOUT = 10.0
_GRACE = 0.5  # seconds in-flight requests get before a forced exit
_JOIN_TIMEOUT = 5.0


def _find_transport(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Any:
    """Find the asyncio transport behind an ASGI `send` callable.

    uvicorn's `send` is a bound method of its RequestResponseCycle (h11 and httptools alike),
    which holds `.transport`. Starlette wraps `send` in closures (error and exception
    middleware), so follow `__self__`, `__wrapped__`, `func` and closure cells a few levels.
    """
    seen = set() if seen is None else seen
    if obj is None or depth > 8 or id(obj) in seen:
        return None
    seen.add(id(obj))
    transport = getattr(obj, "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        return transport
    candidates: list[Any] = []
    for attr in ("__self__", "__wrapped__", "func", "_send"):
        candidates.append(getattr(obj, attr, None))
    for cell in getattr(obj, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            candidates.append(cell.cell_contents)
    for candidate in candidates:
        if candidate is None or not (callable(candidate) or hasattr(candidate, "transport")):
            continue
        found = _find_transport(candidate, depth + 1, seen)
        if found is not None:
            return found
    return None


class ConnectionDropped(Exception):
    """Raised by the fallback of `drop_connection` to cut a response short."""


async def drop_connection(send: Any) -> None:
    """Close the client connection without an HTTP response (for "reset" faults).

    `send` is the ASGI send callable (or a starlette `Request`). With uvicorn the TCP
    connection is aborted and this returns; whatever the handler sends afterwards is
    discarded. Without a transport to abort, it starts a response that promises a body and
    raises `ConnectionDropped`, so the server closes the connection mid-response and the
    client sees an incomplete message either way.
    """
    transport = _find_transport(send)
    if transport is not None:
        transport.abort()
        # Let the protocol's connection_lost run, so uvicorn marks the request as
        # disconnected and ignores the response the handler goes on to return.
        for _ in range(3):
            await asyncio.sleep(0)
        return
    raw_send = getattr(send, "_send", send)
    await raw_send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"1024")],
        }
    )
    raise ConnectionDropped("connection dropped on purpose (emulated fault)")


class EmulatorServer:
    """Serve an ASGI app with uvicorn on 127.0.0.1 and a free port, in a background thread.

    Usable as a sync context manager (`with EmulatorServer(app) as server: server.url`) and
    an async one. Starts in well under a second; stops cleanly, even if a handler is hanging
    (a forced exit after a short grace, then the thread is joined with a timeout).
    """

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, http: str = "auto"
    ) -> None:
        self.app = app
        self.host = host  # an IPv4 address; emulators only ever listen on loopback
        self.port = port  # the bound port once started
        self._requested_port = port  # 0: a free port, picked again on every start
        self.http = http  # "auto" | "h11" | "httptools": uvicorn's HTTP protocol
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stopping = False

    async def _serve_app(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # A handler still hanging at a forced stop: cut its connection quietly instead of
            # letting uvicorn log a traceback and send a 500 for every one of them.
            transport = _find_transport(send)
            if transport is not None:
                transport.abort()
                await asyncio.sleep(0)

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` once started."""
        if self._server is None:
            raise RuntimeError("the emulator server is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmulatorServer:
        if self._server is not None:
            raise RuntimeError("the emulator server is already started")
        # Bind here, in the caller's thread: the port is known at once and a bind error
        # surfaces as an exception instead of a dead background thread.
        # IPPROTO_TCP, not 0: asyncio only disables Nagle's algorithm on accepted sockets it
        # recognises as TCP, and with Nagle every keep-alive request waits ~40 ms.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._serve_app,
            http=self.http,
            interface="asgi3",
            proxy_headers=False,
            log_level="warning",
            log_config=None,  # leave the application's logging setup alone
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._error = None
        self._stopping = False

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # surfaced by start()
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(
            target=run, name=f"emulator-server-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                error = self._error
                self.stop()
                raise RuntimeError(f"the emulator server did not start: {error!r}") from error
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        """Stop serving; in-flight requests get a short grace, then are cut."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            self._server = None
            return
        self._stopping = True
        server.should_exit = True
        thread.join(_GRACE)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_JOIN_TIMEOUT)
        self._server = None
        self._thread = None
        if thread.is_alive():
            raise RuntimeError("the emulator server thread did not stop")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmulatorServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

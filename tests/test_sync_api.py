"""The sync API keeps its connections, and one Router works across event loops and threads.

Connections are counted by a loopback TCP proxy in front of each emulator: every TCP connection
the Router opens (API calls and image downloads alike, since the emulators build download URLs
from the Host they were called on) is one accepted socket at the proxy.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imagerouter import ImageRouterError, Router
from imagerouter.emulated import Emulators
from imagerouter.portal import Portal

from .conftest import MakeRouter


class CountingProxy:
    """Forwards every TCP connection to `upstream` and counts the connections accepted."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.accepted += 1
                self._open += [client, server]
            threading.Thread(target=_pump, args=(client, server), daemon=True).start()
            threading.Thread(target=_pump, args=(server, client), daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._open:
                sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the other side went away


@pytest.fixture
def proxies(emulators: Emulators) -> Iterator[dict[str, CountingProxy]]:
    made = {}
    for name in emulators.servers:
        server = emulators.servers[name]
        made[name] = CountingProxy((server.host, server.port))
    yield made
    for proxy in made.values():
        proxy.close()


@pytest.fixture
def proxied(make_router: MakeRouter, proxies: dict[str, CountingProxy]) -> Router:
    return make_router(base_urls={name: proxy.url for name, proxy in proxies.items()})


def test_ten_sync_calls_share_one_connection(
    proxied: Router, proxies: dict[str, CountingProxy]
) -> None:
    results = [proxied.generate(f"a lighthouse, take {i}") for i in range(10)]
    assert [len(result.images) for result in results] == [1] * 10
    # Ten creates, their polls and ten downloads, one after another: one kept-alive
    # connection per provider the requests went to (asyncio.run per call opened ten+).
    used = {result.provider for result in results}
    assert {name: proxies[name].accepted for name in used} == {name: 1 for name in used}
    assert sum(proxy.accepted for proxy in proxies.values()) == len(used)


def test_a_router_survives_ten_successive_event_loops(
    proxied: Router, proxies: dict[str, CountingProxy]
) -> None:
    for i in range(10):
        result = asyncio.run(proxied.agenerate(f"a fox, loop {i}"))
        assert len(result.images) == 1 and result.images[0].path.is_file()
    # Mixed with the sync API on the same Router, before and after further loops.
    assert len(proxied.generate("a sync fox").images) == 1
    assert len(asyncio.run(proxied.agenerate("one more loop")).images) == 1
    # Each loop's client was closed on its own loop when that loop ended: one connection
    # per loop, plus the portal's.
    assert sum(proxy.accepted for proxy in proxies.values()) == 12


def test_concurrent_sync_calls_from_four_threads(
    proxied: Router, proxies: dict[str, CountingProxy]
) -> None:
    def work(thread: int) -> list[Path]:
        paths: list[Path] = []
        for i in range(3):
            result = proxied.generate(f"thread {thread}, image {i}")
            paths += [image.path for image in result.images]
        return paths

    with ThreadPoolExecutor(4) as pool:
        per_thread = list(pool.map(work, range(4)))
    paths = [path for paths in per_thread for path in paths]
    assert len(paths) == 12 and len(set(paths)) == 12
    assert all(path.is_file() for path in paths)
    # One pool on the portal: at most one connection per call in flight at once.
    assert 1 <= sum(proxy.accepted for proxy in proxies.values()) <= 4 * len(proxies)


async def test_a_sync_twin_inside_a_loop_still_names_the_async_one(proxied: Router) -> None:
    with pytest.raises(ImageRouterError, match=r"await router\.agenerate"):
        proxied.generate("inside a loop")


def test_close_stops_the_portal_thread_and_is_idempotent(proxied: Router) -> None:
    proxied.generate("before close")
    names = {thread.name for thread in threading.enumerate()}
    assert "imagerouter-portal" in names
    proxied.close()
    proxied.close()
    assert "imagerouter-portal" not in {thread.name for thread in threading.enumerate()}


async def test_aclose_closes_this_loops_client_and_the_portal(make_router: MakeRouter) -> None:
    router = make_router()
    await asyncio.to_thread(router.generate, "from a worker thread")
    http = router.http()
    assert not http.is_closed
    await router.aclose()
    assert http.is_closed
    assert "imagerouter-portal" not in {thread.name for thread in threading.enumerate()}


def test_portal_cancels_the_job_when_the_caller_is_interrupted() -> None:
    # What Ctrl-C does to a sync call: the job is cancelled on the portal's loop and its
    # cleanup runs to the end before the interrupt reaches the caller.
    assert threading.current_thread() is threading.main_thread()
    portal = Portal()
    cleaned: list[str] = []
    started = threading.Event()

    async def job() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # a cleanup that awaits (a ledger write) still runs
            cleaned.append("recorded")
            raise

    def press_ctrl_c() -> None:
        started.wait()
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        portal.call(job)
    assert cleaned == ["recorded"]
    portal.close()


def test_interpreter_exit_without_close_does_not_hang(
    emulators: Emulators, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""
        from imagerouter import Router
        from imagerouter.config import load_config
        config = load_config({{"providers": {{
            "runapi": {{"base_url": {emulators.url("runapi")!r},
                        "api_key": {emulators.keys["runapi"]!r}, "poll_interval": 0.01}},
            "runflow": {{"base_url": {emulators.url("runflow")!r},
                         "api_key": {emulators.keys["runflow"]!r}, "poll_interval": 0.01}}}},
            "output": {{"dir": {str(tmp_path / "out")!r}}},
            "ledger": {{"path": {str(tmp_path / "exit.db")!r}}}}})
        router = Router(config)
        print(len(router.generate("left open at exit").images))
        """
    )
    # The timeout only guards the suite against a hang; nothing here measures time.
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert "Traceback" not in done.stderr

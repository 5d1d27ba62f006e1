"""The PostgreSQL ledger's read pool, the sweeper's advisory-lock lease, and what a request
meets when PostgreSQL goes away (fail closed: nothing paid starts). Real server on
127.0.0.1:5432, a fresh schema per test; an outage is a loopback forwarder the test cuts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from click.testing import CliRunner

from imagerouter import Router
from imagerouter.cli.main import cli
from imagerouter.config import Config, load_config
from imagerouter.emulated import Emulators
from imagerouter.emulation import EmulatorServer
from imagerouter.errors import LedgerUnavailableError
from imagerouter.gateway import create_app
from imagerouter.ledger_commit import deferred_commits
from imagerouter.plugins import Plugins
from imagerouter.stores import open_ledger
from imagerouter.stores.pg_lease import PgLease
from imagerouter.stores.pg_reads import PgAsyncLedger
from imagerouter.stores.postgres import PgLedger

from .conftest import base_config, fast_sleep
from .test_stores_ledger import pg_url, request_kwargs  # noqa: F401 - pg_url: a fresh schema


class CutProxy:
    """A loopback TCP forwarder to PostgreSQL. `cut()` closes its port and every connection
    through it, as a server that went away would (the shared server itself stays up)."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.upstream = upstream
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.port = 0
        self._listen()

    def _listen(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR
        self.port = self._listener.getsockname()[1]
        self._cut = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def restore(self) -> None:
        """The server is back: the same port accepts connections again."""
        self._listen()

    def url(self, pg_url: str) -> str:  # noqa: F811 - a URL, not the fixture
        return pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}", 1)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return
            with self._lock:
                if self._cut:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._sockets = self._sockets, []
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join()


@pytest.fixture
def proxy() -> Iterator[CutProxy]:
    forwarder = CutProxy()
    yield forwarder
    forwarder.cut()


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


def _backend_pid(ledger: PgLedger) -> int:
    with ledger.reading() as conn:
        return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def _terminate(url: str, pid: int) -> None:
    """End a server session as a restart would, and wait (up to 30 s) until it has ended."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))


# -- the read pool ---------------------------------------------------------------------------


def test_reads_do_not_wait_for_a_busy_writer(pg_url: str) -> None:  # noqa: F811
    with open_ledger(pg_url) as ledger:
        assert isinstance(ledger, PgLedger) and isinstance(ledger.aio, PgAsyncLedger)
        ledger.begin_request("committed", **request_kwargs())  # type: ignore[arg-type]
        writer_busy = threading.Event()
        release_writer = threading.Event()

        def slow_write() -> None:  # holds the writer thread (and the writer connection)
            ledger.begin_request("uncommitted", **request_kwargs())  # type: ignore[arg-type]
            writer_busy.set()
            release_writer.wait(60)

        async def main() -> tuple[list[str], list[str], str]:
            write = asyncio.create_task(ledger.aio.call(slow_write))
            await asyncio.to_thread(writer_busy.wait, 60)
            # Both kinds of read answer while the writer's transaction is still open, and
            # see committed rows only.
            async_ids = [row.request_id for row in await ledger.aio.history()]
            sync_ids = [row.request_id for row in await asyncio.to_thread(ledger.history)]
            with ledger.reading() as conn:
                status = conn.execute(
                    "SELECT status FROM requests WHERE id = ?", ("committed",)
                ).fetchone()[0]
            release_writer.set()
            await write
            return async_ids, sync_ids, status

        async_ids, sync_ids, status = asyncio.run(main())
        assert async_ids == ["committed"] and sync_ids == ["committed"] and status == "running"
        # The same ledger's async reads work from another event loop afterwards.
        ids = asyncio.run(ledger.aio.history())
        assert {row.request_id for row in ids} == {"committed", "uncommitted"}


def test_a_request_reads_its_own_deferred_writes(pg_url: str) -> None:  # noqa: F811
    with open_ledger(pg_url) as ledger:
        assert isinstance(ledger, PgLedger)

        async def main() -> tuple[bool, list[str], bool, list[str]]:
            with deferred_commits() as pending:
                await ledger.aio.begin_request("mine", **request_kwargs())  # type: ignore[arg-type]
                pooled_before = ledger.reads_pooled()
                seen = [row.request_id for row in await ledger.aio.history()]
                await pending.make_durable_async(final=True)
                pooled_after = ledger.reads_pooled()
                again = [row.request_id for row in await ledger.aio.history()]
            return pooled_before, seen, pooled_after, again

        pooled_before, seen, pooled_after, again = asyncio.run(main())
        assert not pooled_before and seen == ["mine"]  # read on the writer's transaction
        assert pooled_after and again == ["mine"]  # committed: the pool sees it too


def test_a_read_connection_refuses_writes(pg_url: str) -> None:  # noqa: F811
    with open_ledger(pg_url) as ledger:
        with pytest.raises(sqlite3.Error, match="read-only"), ledger.reading() as conn:
            conn.execute(
                "UPDATE requests SET status = 'served' WHERE id = ?", ("nobody",)
            )
        ledger.begin_request("r", **request_kwargs())  # type: ignore[arg-type]
        assert [row.status for row in ledger.history()] == ["running"]


def test_a_read_survives_the_server_dropping_its_pooled_connection(pg_url: str) -> None:  # noqa: F811
    with open_ledger(pg_url) as ledger:
        assert isinstance(ledger, PgLedger)
        ledger.begin_request("r", **request_kwargs())  # type: ignore[arg-type]
        first = _backend_pid(ledger)
        _terminate(pg_url, first)
        # The dropped connection is replaced and the read run again on the new one.
        assert [row.request_id for row in ledger.history()] == ["r"]
        assert _backend_pid(ledger) != first


def test_pool_size_bounds_the_read_connections(pg_url: str) -> None:  # noqa: F811
    ledger = PgLedger(pg_url, pool_size=2)
    try:
        assert ledger.reads.size == 2
        ledger.begin_request("r", **request_kwargs())  # type: ignore[arg-type]

        async def main() -> set[int]:
            async def pid() -> int:
                return await ledger.reads.run(lambda: _backend_pid(ledger))

            return set(await asyncio.gather(*(pid() for _ in range(40))))

        pids = asyncio.run(main())
        assert 1 <= len(pids) <= 2
    finally:
        ledger.close()


# -- the sweeper's lease ---------------------------------------------------------------------


async def test_one_advisory_lease_holder_at_a_time(pg_url: str) -> None:  # noqa: F811
    first, second = PgLease(pg_url, "sweeper"), PgLease(pg_url, "sweeper")
    other_fleet = PgLease(pg_url, "other:sweeper")
    try:
        assert await first() and await first()  # held while its session lives
        assert not await second()
        assert await other_fleet()  # another name is another lock
        await first.release()
        assert await second()
        assert not await first()
    finally:
        for lease in (first, second, other_fleet):
            await lease.release()


async def test_a_lease_dropped_by_the_server_goes_to_the_next_replica_at_once(
    pg_url: str,  # noqa: F811
) -> None:
    first, second = PgLease(pg_url, "sweeper"), PgLease(pg_url, "sweeper")
    try:
        assert await first()
        assert first._conn is not None
        _terminate(pg_url, first._conn.info.backend_pid)
        assert await second()  # no TTL to wait out: the lock went with the session
        assert not await first()  # it reconnects, and finds the lock taken
        await second.release()
        assert await first()  # and takes it once free
    finally:
        await first.release()
        await second.release()


_HOLDER = """
import asyncio, sys
from imagerouter.stores.pg_lease import PgLease
lease = PgLease(sys.argv[1], "sweeper")
assert asyncio.run(lease())
print("held", flush=True)
sys.stdin.read()
"""


def test_a_sigkilled_holder_loses_the_lease(pg_url: str) -> None:  # noqa: F811
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, pg_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lease = PgLease(pg_url, "sweeper")

    async def ask_until_held() -> bool:
        # The server ends the dead process's session when its socket closes; ask until it
        # has (bounded: this is not a timing assertion).
        for _ in range(600):
            if await lease():
                return True
            await asyncio.sleep(0.05)
        return False

    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not asyncio.run(lease())
        holder.kill()
        holder.wait(30)
        assert asyncio.run(ask_until_held())
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
        asyncio.run(lease.release())


async def test_an_unreachable_server_means_not_held(caplog: pytest.LogCaptureFixture) -> None:
    lease = PgLease(f"postgresql://u:hunter2@127.0.0.1:{closed_port()}/db", "sweeper")
    assert not await lease()
    assert not await lease()
    await lease.release()
    warnings = [r.getMessage() for r in caplog.records if "sweeper lease" in r.getMessage()]
    assert len(warnings) == 1 and "hunter2" not in warnings[0]  # once per outage
    assert "hunter2" not in repr(lease)


def test_the_gateway_sweeps_under_the_advisory_lease_with_a_postgresql_ledger(
    plugins: Plugins, tmp_path: Path, pg_url: str,  # noqa: F811
) -> None:
    from imagerouter.gateway import Gateway

    data = {**base_config(tmp_path), "ledger": {"url": pg_url}, "shared": {"url": "memory"}}
    gateway = Gateway(load_config(data, known_providers=plugins.providers()), plugins=plugins)
    assert isinstance(gateway.sweep_lease, PgLease)
    assert gateway.sweep_lease.name == "imagerouter:lease:sweeper"
    local = {**base_config(tmp_path), "shared": {"url": "memory"}}
    gateway = Gateway(load_config(local, known_providers=plugins.providers()), plugins=plugins)
    assert gateway.sweep_lease is None


# -- PostgreSQL down: fail closed ------------------------------------------------------------


def _config(emulators: Emulators, plugins: Plugins, tmp_path: Path, url: str,
            **extra: Any) -> Config:
    data = {**base_config(tmp_path), "budget": {"total_usd": "5"}, **extra}
    cfg = emulators.configure(load_config(data, known_providers=plugins.providers()))
    # The emulated twin is SQLite; these tests point the ledger at PostgreSQL on purpose.
    return cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={"url": url})})


def test_a_router_whose_ledger_went_away_starts_nothing_paid(
    emulators: Emulators, plugins: Plugins, tmp_path: Path, pg_url: str,  # noqa: F811
    proxy: CutProxy,
) -> None:
    cfg = _config(emulators, plugins, tmp_path, proxy.url(pg_url))
    with Router(cfg, plugins=plugins, sleep=fast_sleep) as router:
        router.generate("a lighthouse", n=1)
        assert sum(emulators.created().values()) == 1
        proxy.cut()
        for _ in range(2):  # the dropped connection, then the refused reconnect
            with pytest.raises(LedgerUnavailableError, match=r"the ledger at .* is unavailable"):
                router.generate("a second lighthouse", n=1)
        assert sum(emulators.created().values()) == 1  # no paid create without the ledger
        with psycopg.connect(pg_url) as conn:
            statuses = [r[0] for r in conn.execute("SELECT status FROM requests")]
            reserved = conn.execute("SELECT count(*) FROM reservations").fetchone()
        assert statuses == ["served"] and reserved == (1,)
        proxy.restore()  # the server is back: the same Router goes on, nothing restarted
        assert len(router.generate("a third lighthouse", n=1).images) == 1
        assert sum(emulators.created().values()) == 2


def test_the_gateway_answers_503_without_its_ledger(
    emulators: Emulators, plugins: Plugins, tmp_path: Path, pg_url: str,  # noqa: F811
    proxy: CutProxy,
) -> None:
    cfg = _config(emulators, plugins, tmp_path, proxy.url(pg_url), gateway={"api_keys": []})
    app = create_app(cfg, plugins=plugins)
    server = EmulatorServer(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            ok = http.post("/v1/images/generations", json={"prompt": "a fox"})
            assert ok.status_code == 200, ok.text
            proxy.cut()
            for _ in range(2):
                refused = http.post("/v1/images/generations", json={"prompt": "a fox"})
                assert refused.status_code == 503, refused.text
                error = refused.json()["error"]
                assert error["code"] == "ledger_unavailable"
                assert error["type"] == "server_error"
                assert "127.0.0.1" not in error["message"]  # the operator's log has where
                assert refused.headers["retry-after"] == "5"
            assert sum(emulators.created().values()) == 1
            proxy.restore()
            again = http.post("/v1/images/generations", json={"prompt": "a fox"})
            assert again.status_code == 200, again.text
        assert sum(emulators.created().values()) == 2
    finally:
        server.stop()
        app.state.gateway.close()


def test_a_gateway_started_without_its_ledger_answers_503(
    emulators: Emulators, plugins: Plugins, tmp_path: Path,
) -> None:
    url = f"postgresql://u:hunter2@127.0.0.1:{closed_port()}/db"
    app = create_app(_config(emulators, plugins, tmp_path, url, gateway={"api_keys": []}),
                     plugins=plugins)
    server = EmulatorServer(app).start()
    try:
        refused = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "a fox"},
                             timeout=60)
        assert refused.status_code == 503 and "hunter2" not in refused.text
        assert refused.json()["error"]["code"] == "ledger_unavailable"
        assert sum(emulators.created().values()) == 0
    finally:
        server.stop()
        app.state.gateway.close()


def test_the_cli_reports_an_unreachable_ledger_in_one_line(
    emulators: Emulators, tmp_path: Path,
) -> None:
    data: dict[str, Any] = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        data["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    data["ledger"] = {"url": f"postgresql://u:hunter2@127.0.0.1:{closed_port()}/db"}
    data["budget"] = {"total_usd": "5"}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["generate", "a fox", "--config", str(config)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "LedgerUnavailableError" in lines[0], result.output
    assert "is unavailable" in lines[0] and "hunter2" not in result.output
    assert sum(emulators.created().values()) == 0

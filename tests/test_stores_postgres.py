"""The PostgreSQL ledger against a real server: budgets shared by processes overshoot by
zero, `imagerouter db upgrade` on both backends, and a whole generate on the emulators with
`ledger.url: postgresql://...`."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
from click.testing import CliRunner

from imagerouter import Router
from imagerouter.cli.main import cli
from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.ledger import Ledger
from imagerouter.migrations import MIGRATIONS, migrate
from imagerouter.plugins import Plugins
from imagerouter.stores import open_ledger
from imagerouter.stores.postgres import PgLedger

from .conftest import base_config, fast_sleep
from .test_stores_ledger import pg_url  # noqa: F401 - the fixture: a fresh schema

# Each process: 15 concurrent reservations of $0.05 (the async API: one writer thread,
# batched transactions) against one total limit of $1.00, i.e. room for 20 in all.
_RESERVER = """
import asyncio, sys
from decimal import Decimal
from imagerouter.errors import BudgetExceededError
from imagerouter.stores import open_ledger

url, name = sys.argv[1], sys.argv[2]
ledger = open_ledger(url)
limits = [("budget.total_usd", None, Decimal("1.00"))]

async def one(n):
    try:
        await ledger.aio.reserve(f"{name}-{n}", request_id=f"{name}-{n}",
                                 amount=Decimal("0.05"), limits=limits)
        return 1
    except BudgetExceededError:
        return 0

async def main():
    return sum(await asyncio.gather(*(one(n) for n in range(15))))

print(asyncio.run(main()))
ledger.close()
"""


def test_processes_reserving_against_one_budget_overshoot_by_zero(pg_url: str) -> None:  # noqa: F811
    open_ledger(pg_url).close()  # migrated once, before the race
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RESERVER, pg_url, f"p{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    granted = 0
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        granted += int(out.strip())
    assert granted == 20
    with open_ledger(pg_url) as ledger:
        assert ledger.committed_usd(None) == Decimal("1.00")


def test_replicas_opening_a_new_database_together_migrate_once(pg_url: str) -> None:  # noqa: F811
    code = (
        "import sys; from imagerouter.stores import open_ledger; open_ledger(sys.argv[1]).close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, pg_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with psycopg.connect(pg_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [m.__name__ for m in MIGRATIONS]


def test_db_upgrade_on_postgresql(pg_url: str) -> None:  # noqa: F811
    runner = CliRunner()
    first = runner.invoke(cli, ["db", "upgrade", "--url", pg_url, "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["backend"] == "postgresql" and report["up_to_date"]
    assert report["applied"] == [m.__name__ for m in MIGRATIONS]
    again = runner.invoke(cli, ["db", "upgrade", "--url", pg_url, "--json"])
    assert json.loads(again.output)["applied"] == []


def test_db_upgrade_carries_an_old_sqlite_file_s_history_over(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    old = list(MIGRATIONS[:3])  # a ledger written before m004 existed
    saved = MIGRATIONS[:]
    MIGRATIONS[:] = old
    try:
        migrate(conn, now="2026-01-01T00:00:00.000000Z")
    finally:
        MIGRATIONS[:] = saved
    conn.execute(
        "INSERT INTO reservations (id, request_id, amount_usd, state, created_at)"
        " VALUES ('v', 'r', '0.50', 'open', '2026-01-01T00:00:00.000000Z')"
    )
    conn.close()
    result = CliRunner().invoke(cli, ["db", "upgrade", "--url", f"sqlite://{path}"])
    assert result.exit_code == 0, result.output
    assert "sqlite" in result.output
    for step in MIGRATIONS[3:]:
        assert step.__name__ in result.output
    with Ledger(path) as ledger:
        assert ledger.committed_usd(None) == Decimal("0.50")


def test_db_upgrade_refuses_a_bad_url_and_reports_a_dead_server() -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["db", "upgrade", "--url", "mysql://h/db"])
    assert bad.exit_code == 2
    dead = runner.invoke(cli, ["db", "upgrade", "--url", "postgresql://u:hunter2@127.0.0.1:9/db"])
    assert dead.exit_code == 1
    assert "hunter2" not in dead.output


def test_generate_on_the_emulators_with_a_postgresql_ledger(
    emulators: Emulators,
    plugins: Plugins,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    data = {**base_config(tmp_path), "budget": {"total_usd": "5"}}
    cfg = emulators.configure(load_config(data, known_providers=plugins.providers()))
    # The emulated twin is SQLite; this test points the run at PostgreSQL on purpose.
    cfg = cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={"url": pg_url})})
    with Router(cfg, plugins=plugins, sleep=fast_sleep) as router:
        assert isinstance(router.ledger, PgLedger)
        result = router.generate("a lighthouse at dusk", n=2)
        assert len(result.images) == 2 and all(i.path.exists() for i in result.images)
    with psycopg.connect(pg_url) as conn:
        status = conn.execute("SELECT status FROM requests").fetchall()
        images = conn.execute("SELECT path FROM images ORDER BY path").fetchall()
        reservations = conn.execute("SELECT state FROM reservations").fetchall()
    assert [r[0] for r in status] == ["served"]
    assert sorted(str(i.path) for i in result.images) == [r[0] for r in images]
    assert {r[0] for r in reservations} == {"settled"}


def test_the_ledger_reconnects_after_the_server_drops_it(pg_url: str) -> None:  # noqa: F811
    from .test_stores_ledger import request_kwargs

    with open_ledger(pg_url) as ledger:
        ledger.begin_request("before", **request_kwargs())  # type: ignore[arg-type]
        with ledger.reading() as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        async def main() -> list[object]:
            results: list[object] = []
            for n in range(3):  # the first may fail (its connection was gone): never more
                try:
                    await ledger.aio.begin_request(f"after{n}", **request_kwargs())  # type: ignore[arg-type]
                    results.append("ok")
                except sqlite3.OperationalError as exc:
                    results.append(exc)
            return results

        results = asyncio.run(main())
        assert results[1:] == ["ok", "ok"]
        ids = {row.request_id for row in ledger.history()}
        assert {"before", "after1", "after2"} <= ids

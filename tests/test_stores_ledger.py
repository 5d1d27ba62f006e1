"""The ledger contract, on both backends: the SQLite file and a real PostgreSQL (each test in
a schema of its own, dropped afterwards), through the async API (`ledger.aio`, one writer
thread whose queue is committed in batches) and the sync one."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from imagerouter.errors import BudgetExceededError
from imagerouter.ledger import Ledger
from imagerouter.migrations import MIGRATIONS, applied_migrations
from imagerouter.stores import ledger_url, open_ledger, redact_url, sqlite_path
from imagerouter.stores.postgres import PgLedger, translate

PG_BASE = os.environ.get("IMAGEROUTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_BASE else "?"
    return f"{PG_BASE}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test database, as a ledger URL; dropped afterwards."""
    schema = f"ir_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield pg_schema_url(schema)
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    with open_ledger(url) as opened:
        yield opened


def request_kwargs(**extra: object) -> dict[str, object]:
    return {
        "operation": "generate",
        "model": "gpt-image-1",
        "tier": None,
        "prompt": "p",
        "request": {"n": 1},
        "output_dir": "/tmp/out",
        "quoted_usd": Decimal("0.04"),
        **extra,
    }


async def paid_job(ledger: Ledger, n: int, *, images: int = 1) -> str:
    """One request with one attempt and one accepted task, through the async API."""
    rid, aid, tid = f"r{n}", f"r{n}-a1", f"r{n}-t1"
    await ledger.aio.begin_request(rid, **request_kwargs())  # type: ignore[arg-type]
    await ledger.aio.begin_attempt(
        aid,
        request_id=rid,
        attempt_no=1,
        provider="runapi",
        model="gpt-image-1",
        operation="generate",
        quoted_usd=Decimal("0.04"),
        params={"size": "1024x1024"},
    )
    await ledger.aio.task_submitting(
        tid,
        attempt_id=aid,
        request_id=rid,
        provider="runapi",
        model="gpt-image-1",
        operation="generate",
        idempotency_key=f"k{n}",
        num_images=images,
        quoted_usd=Decimal("0.04") * images,
    )
    await ledger.aio.task_accepted(tid, provider_task_id=f"p{n}", poll_ref=f"p{n}")
    return tid


def test_the_backend_follows_the_url(url: str, ledger: Ledger) -> None:
    assert isinstance(ledger, PgLedger) == url.startswith("postgresql://")
    with ledger.reading() as conn:
        assert applied_migrations(conn) == [m.__name__ for m in MIGRATIONS]


def test_a_job_s_life_through_the_async_api(ledger: Ledger) -> None:
    async def main() -> None:
        tid = await paid_job(ledger, 1, images=2)
        uncollected = await ledger.aio.uncollected()
        assert [t.task_id for t in uncollected] == [tid]
        await ledger.aio.task_finished(tid, state="succeeded", image_urls=["https://x/1"])
        for index in (0, 1):
            await ledger.aio.image_saved(
                tid,
                index=index,
                path=f"/tmp/out/r1-{index}.png",
                sha256="0" * 64,
                source_url="https://x/1",
                width=8,
                height=8,
                format="png",
                size_bytes=10,
            )
        # Saving an index again replaces its row (INSERT OR REPLACE on both backends).
        await ledger.aio.image_saved(
            tid,
            index=1,
            path="/tmp/out/r1-2.png",
            sha256="1" * 64,
            source_url="https://x/1",
            width=8,
            height=8,
            format="png",
            size_bytes=11,
        )
        await ledger.aio.image_moved(tid, index=0, path="/tmp/out/r1-1.png")
        await ledger.aio.task_finished(tid, state="collected")
        await ledger.aio.end_attempt("r1-a1", outcome="served", accepted="yes")
        await ledger.aio.end_request(
            "r1",
            status="served",
            provider="runapi",
            model="gpt-image-1",
            cost_usd=Decimal("0.08"),
            billed_usd=None,
            elapsed_s=1.5,
        )
        assert await ledger.aio.uncollected() == []
        detail = await ledger.aio.request_detail("r1")
        assert detail["request"]["status"] == "served"
        assert sorted(i["path"] for i in detail["images"]) == [
            "/tmp/out/r1-1.png",
            "/tmp/out/r1-2.png",
        ]
        assert "rowid" not in detail["request"]
        (history,) = await ledger.aio.history()
        assert (history.request_id, history.images, history.cost_usd) == ("r1", 2, Decimal("0.08"))
        (total,) = await ledger.aio.spend()
        assert (total.requests, total.served, total.images) == (1, 1, 2)

    asyncio.run(main())


def test_queued_calls_share_transactions_and_a_failing_one_fails_alone(ledger: Ledger) -> None:
    async def main() -> list[object]:
        calls = [
            ledger.aio.begin_request(f"q{n}", **request_kwargs())  # type: ignore[arg-type]
            for n in range(200)
        ]
        calls.insert(100, ledger.aio.task_finished("no-such-task", state="failed"))
        return await asyncio.gather(*calls, return_exceptions=True)

    before = ledger.aio.batches
    results = asyncio.run(main())
    assert isinstance(results[100], KeyError)
    assert [r for n, r in enumerate(results) if n != 100] == [None] * 200
    # Coalesced: far fewer transactions than calls.
    assert ledger.aio.batches - before < 100
    with ledger.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 200


def test_an_awaited_write_is_committed_for_other_connections(url: str, ledger: Ledger) -> None:
    async def main() -> None:
        await paid_job(ledger, 7)

    asyncio.run(main())
    # Another connection (another process would do the same) sees the accepted task.
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        assert path is not None
        with sqlite3.connect(path) as other:
            rows = other.execute("SELECT state FROM tasks").fetchall()
    else:
        with psycopg.connect(url) as pg:
            rows = pg.execute("SELECT state FROM tasks").fetchall()
    assert [tuple(r) for r in rows] == [("accepted",)]


def test_reservations_check_every_limit_and_settle(ledger: Ledger) -> None:
    limits = [("budget.total_usd", None, Decimal("0.10"))]

    async def main() -> None:
        await ledger.aio.reserve("v1", request_id="r1", amount=Decimal("0.06"), limits=limits)
        with pytest.raises(BudgetExceededError) as caught:
            await ledger.aio.reserve("v2", request_id="r2", amount=Decimal("0.05"), limits=limits)
        assert caught.value.limit == "budget.total_usd"
        assert await ledger.aio.committed_usd(None) == Decimal("0.06")
        await ledger.aio.settle("v1", amount=Decimal("0.01"))
        await ledger.aio.reserve("v3", request_id="r3", amount=Decimal("0.05"), limits=limits)
        await ledger.aio.release("v3")
        await ledger.aio.release("v3")  # twice: a no-op
        assert await ledger.aio.committed_usd(None) == Decimal("0.01")
        window = datetime.now(UTC) + timedelta(hours=1)
        assert await ledger.aio.committed_usd(window) == Decimal(0)

    asyncio.run(main())
    assert ledger.committed_usd(None) == Decimal("0.01")  # the sync API agrees


def test_interrupting_reports_paid_and_unknown_tasks(ledger: Ledger) -> None:
    async def main() -> None:
        tid = await paid_job(ledger, 3)
        await ledger.aio.task_submitting(
            "r3-t2",
            attempt_id="r3-a1",
            request_id="r3",
            provider="runapi",
            model="gpt-image-1",
            operation="generate",
            idempotency_key="k3b",
            num_images=1,
            quoted_usd=Decimal("0.04"),
        )
        await ledger.aio.reserve(
            "v", request_id="r3", amount=Decimal("0.08"), limits=[], attempt_id="r3-a1"
        )
        paid = await ledger.aio.interrupt_request("r3", error="stop")
        assert [(p.task_id, p.state) for p in paid] == [(tid, "accepted"), ("r3-t2", "unknown")]
        assert await ledger.aio.settle_reservations("r3") == 1
        assert await ledger.aio.committed_usd(None) == Decimal("0.08")
        unknown = await ledger.aio.unknown_tasks(provider="runapi")
        assert [u.task_id for u in unknown] == ["r3-t2"]
        await ledger.aio.task_checked("r3-t2", error="not found yet")
        assert await ledger.aio.watching() == {"r3": 2}

    asyncio.run(main())


def test_sync_and_async_callers_share_one_ledger(ledger: Ledger) -> None:
    seen: list[str] = []

    def sync_side(n: int) -> None:
        ledger.begin_request(f"s{n}", **request_kwargs())  # type: ignore[arg-type]
        seen.append(f"s{n}")

    async def main() -> None:
        await asyncio.gather(
            *(asyncio.to_thread(sync_side, n) for n in range(10)),
            *(
                ledger.aio.begin_request(f"a{n}", **request_kwargs())  # type: ignore[arg-type]
                for n in range(10)
            ),
            ledger.aio.call(sync_side, 99),
        )

    asyncio.run(main())
    assert len(seen) == 11
    assert len(ledger.history(limit=100)) == 21


def test_the_async_api_works_across_event_loops(ledger: Ledger) -> None:
    for n in range(3):
        asyncio.run(ledger.aio.begin_request(f"loop{n}", **request_kwargs()))  # type: ignore[arg-type]
    assert {row.request_id for row in ledger.history()} == {"loop0", "loop1", "loop2"}


def test_closing_drains_the_queue_and_refuses_later_calls(url: str) -> None:
    ledger = open_ledger(url)

    async def main() -> None:
        first = asyncio.ensure_future(
            ledger.aio.begin_request("c1", **request_kwargs())  # type: ignore[arg-type]
        )
        await asyncio.sleep(0)
        await first
        ledger.close()
        with pytest.raises(RuntimeError, match="closed"):
            await ledger.aio.begin_request("c2", **request_kwargs())  # type: ignore[arg-type]

    asyncio.run(main())
    with open_ledger(url) as again:
        assert [row.request_id for row in again.history()] == ["c1"]


def test_idempotency_store_runs_on_both_backends(ledger: Ledger) -> None:
    from imagerouter.idempotency import Claim, IdempotencyKey, IdempotencyStore

    store = IdempotencyStore(ledger)
    key = IdempotencyKey.of("key-1", scope="scope")
    got = asyncio.run(
        ledger.aio.call(store.claim, key, "fp", operation="generate", request_id="r-idem")
    )
    assert isinstance(got, Claim)
    again = store.claim(key, "fp", operation="generate", request_id="r-other")
    assert not isinstance(again, Claim) and again.request_id == "r-idem"


def test_urls_and_translation() -> None:
    settings_path = Path("/tmp/x/ledger.db")

    class Settings:
        url: str | None = None
        path: Path | None = settings_path

    assert ledger_url(Settings()) == "sqlite:///tmp/x/ledger.db"  # type: ignore[arg-type]
    assert sqlite_path("sqlite:///tmp/x/ledger.db") == settings_path
    assert sqlite_path("sqlite:////tmp/x/ledger.db") == settings_path
    assert sqlite_path("sqlite://rel/ledger.db") == Path("rel/ledger.db")
    assert sqlite_path("postgresql://h/db") is None
    assert redact_url("postgresql://u:pw@h:5433/db") == "postgresql://u:***@h:5433/db"
    keys: Callable[[str], list[str]] = lambda table: ["task_id", "idx"]  # noqa: E731
    sql = translate(
        "INSERT OR REPLACE INTO images (task_id, idx, path) VALUES (?, ?, ?)", keys, params=True
    )
    assert sql == (
        "INSERT INTO images (task_id, idx, path) VALUES (%s, %s, %s)"
        " ON CONFLICT (task_id, idx) DO UPDATE SET path = EXCLUDED.path"
    )
    assert translate("SELECT '?' , x FROM t WHERE a LIKE '5%' AND b = ?", keys, params=True) == (
        "SELECT '?' , x FROM t WHERE a LIKE '5%%' AND b = %s"
    )
    assert translate("PRAGMA foreign_keys = ON", keys, params=False) == ""
    assert translate("CREATE TABLE t (a REAL)", keys, params=False) == (
        "CREATE TABLE t ( rowid BIGSERIAL,a DOUBLE PRECISION)"
    )


def _others_see(url: str) -> list[str]:
    """Request ids committed, read over a connection of its own (as another process would)."""
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        assert path is not None
        with sqlite3.connect(path) as other:
            return [r[0] for r in other.execute("SELECT id FROM requests ORDER BY id")]
    with psycopg.connect(url) as pg:
        return [r[0] for r in pg.execute("SELECT id FROM requests ORDER BY id")]


def test_deferred_writes_wait_for_the_request_s_barrier(url: str, ledger: Ledger) -> None:
    from imagerouter.ledger_commit import deferred_commits

    async def main() -> None:
        with deferred_commits() as pending:
            await ledger.aio.begin_request("d1", **request_kwargs())  # type: ignore[arg-type]
            # In the open transaction, not yet committed: nothing has left the process.
            assert not pending.durable()
            assert _others_see(url) == []
            await pending.make_durable_async()  # the barrier before an HTTP call
            assert pending.durable()
            assert _others_see(url) == ["d1"]
            await ledger.aio.begin_request("d2", **request_kwargs())  # type: ignore[arg-type]
            await pending.make_durable_async(final=True)  # the request's end
        assert _others_see(url) == ["d1", "d2"]
        # Outside a request, an awaited write is committed on return.
        await ledger.aio.begin_request("d3", **request_kwargs())  # type: ignore[arg-type]
        assert _others_see(url) == ["d1", "d2", "d3"]

    asyncio.run(main())

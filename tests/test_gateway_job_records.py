"""Gateway jobs in the ledger (stores/gateway_jobs.py) on SQLite and PostgreSQL: the store,
migration m010, the jobs list across replicas, and the jobs a dead replica left open, ended by
another replica's sweeper step (gateway/orphaned_jobs.py) with files it serves."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagerouter.execution import Progress
from imagerouter.gateway.jobs import Job
from imagerouter.gateway.orphaned_jobs import end_orphaned_jobs, ending_of
from imagerouter.ledger import Ledger
from imagerouter.ledger_owners import this_process
from imagerouter.migrations import m009_gateway_jobs, m010_gateway_job_links
from imagerouter.stores import open_ledger
from imagerouter.stores.gateway_jobs import (
    AbandonedJob,
    FileRow,
    JobRow,
    JobStatus,
    LedgerJobStore,
    RequestOutcome,
)

from .test_gateway import Served, ServeGateway, serve_gateway
from .test_gateway_jobs import wait_for_job
from .test_stores_ledger import pg_url

__all__ = ["pg_url", "serve_gateway"]  # fixtures, imported for this module

DEAD_OWNER = "dead-owner-0001"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with open_ledger(ledger_url) as opened:
        yield opened


def job_row(job_id: str, created: float, *, status: JobStatus = JobStatus.RUNNING,
            request_id: str | None = None) -> JobRow:
    summary = {"id": job_id, "object": "image.job", "status": status.value,
               "operation": "generate", "model": None, "created": int(created),
               "completed_at": None, "request_id": None, "user": None}
    return JobRow(job_id, status, "url", summary, created, created, request_id)


def orphan(ledger: Ledger, job_id: str, **columns: Any) -> None:
    """Make `job_id` look like a job of a replica that died: its owner row is another host's
    and stopped beating long ago. `columns`: more of the row to set (status, summary_json)."""
    sets = "".join(f", {name} = ?" for name in columns)
    with ledger.transaction() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO owners (id, host, host_key, pid, proc_start, started_at,"
            " seen_at) VALUES (?, 'gone', 'another-host/ns', 4242, NULL, ?, 0.0)",
            (DEAD_OWNER, "2026-01-01T00:00:00+00:00"),
        )
        conn.execute(
            f"UPDATE gateway_jobs SET owner_id = ?{sets} WHERE id = ?",
            (DEAD_OWNER, *columns.values(), job_id),
        )


# -- migration m010 -------------------------------------------------------------------------


def test_m010_backfills_the_request_id_and_creation_time_from_the_summary() -> None:
    conn = sqlite3.connect(":memory:")
    m009_gateway_jobs(conn)
    rows = [
        ("imgjob_a", {"request_id": "ir-1", "created": 1700}, 1800.0),
        ("imgjob_b", {"request_id": None, "created": 1750}, 1850.0),
        ("imgjob_c", {}, 1900.0),  # no creation time in it: the row's update time
    ]
    for job_id, summary, updated in rows:
        conn.execute(
            "INSERT INTO gateway_jobs (id, status, response_format, summary_json, updated_at)"
            " VALUES (?, 'running', 'url', ?, ?)", (job_id, json.dumps(summary), updated)
        )
    m010_gateway_job_links(conn)
    got = conn.execute(
        "SELECT id, request_id, created_at, owner_id FROM gateway_jobs ORDER BY id"
    ).fetchall()
    assert got == [("imgjob_a", "ir-1", 1700.0, None), ("imgjob_b", None, 1750.0, None),
                   ("imgjob_c", None, 1900.0, None)]
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"gateway_jobs_request", "gateway_jobs_created", "gateway_jobs_status"} <= indexes


# -- the store, on both backends ------------------------------------------------------------


async def test_the_store_keeps_jobs_and_files_newest_first(ledger: Ledger) -> None:
    store = LedgerJobStore(ledger)
    await store.save(job_row("imgjob_old", 100.0))
    await store.save(job_row("imgjob_new", 200.0, request_id="ir-x"))
    done = job_row("imgjob_old", 100.0, status=JobStatus.SUCCEEDED, request_id="ir-o")
    files = [FileRow("file-2", "imgjob_old", "/o/2.png", "png", 1),
             FileRow("file-1", "imgjob_old", "/o/1.png", "png", 0)]
    await store.save(done, files)

    loaded = await store.load("imgjob_old")
    assert loaded is not None
    assert (loaded.status, loaded.request_id, loaded.created_at) == (
        JobStatus.SUCCEEDED, "ir-o", 100.0)
    assert loaded.summary == done.summary
    assert await store.load("imgjob_none") is None
    assert [row.id for row in await store.recent(10)] == ["imgjob_new", "imgjob_old"]
    assert [row.id for row in await store.recent(1)] == ["imgjob_new"]
    assert [f.id for f in await store.files_of("imgjob_old")] == ["file-1", "file-2"]
    assert await store.file("file-2") == files[0]
    assert await store.file("file-none") is None
    with ledger.reading() as conn:  # this process owns what it wrote
        owners = {r[0] for r in conn.execute("SELECT owner_id FROM gateway_jobs").fetchall()}
    assert owners == {this_process().owner_id}


async def test_only_a_dead_owners_open_job_is_abandoned_and_it_ends_once(
    ledger: Ledger,
) -> None:
    store = LedgerJobStore(ledger)
    await store.save(job_row("imgjob_live", 100.0))
    await store.save(job_row("imgjob_dead", 100.0, request_id="ir-never-begun"))
    await store.save(job_row("imgjob_ended", 100.0))
    await store.save(job_row("imgjob_ended", 100.0, status=JobStatus.FAILED))
    assert await store.abandoned() == []  # all this live process's
    orphan(ledger, "imgjob_dead")
    orphan(ledger, "imgjob_ended")  # ended already: not open, so not abandoned
    (found,) = await store.abandoned()
    assert (found.job.id, found.request, found.owned) == ("imgjob_dead", None, True)

    final = job_row("imgjob_dead", 100.0, status=JobStatus.FAILED)
    file = FileRow("file-d", "imgjob_dead", "/o/d.png", "png", 0)
    assert await store.end_abandoned(final, [file])
    assert not await store.end_abandoned(final, [FileRow("file-e", "imgjob_dead", "/e", "png", 0)])
    assert [f.id for f in await store.files_of("imgjob_dead")] == ["file-d"]
    loaded = await store.load("imgjob_dead")
    assert loaded is not None and loaded.status is JobStatus.FAILED
    assert loaded.request_id == "ir-never-begun"  # kept when the ending names none
    assert await store.abandoned() == []


# -- when an abandoned job ends (pure) ------------------------------------------------------


def _request(status: str, *, images: int, n: int = 1, open_tasks: int = 0) -> RequestOutcome:
    return RequestOutcome("ir-1", status, n, tuple((f"/o/{i}.png", "png") for i in range(images)),
                          open_tasks, "runflow", "gpt-image-2", "0.04", None, "boom")


@pytest.mark.parametrize(
    ("request_outcome", "owned", "age", "expected"),
    [
        (None, True, 10.0, None),  # no request yet: not before the grace period
        (None, True, 500.0, (JobStatus.FAILED, "gateway_stopped")),
        (_request("running", images=0), True, 500.0, None),  # the sweeper closes it first
        (_request("interrupted", images=0, open_tasks=1), True, 500.0, None),  # collecting
        (_request("interrupted", images=2, n=2), True, 0.0, (JobStatus.SUCCEEDED, None)),
        (_request("served", images=1), True, 0.0, (JobStatus.SUCCEEDED, None)),
        (_request("served", images=1), False, 10.0, None),  # no owner id: wait it out
        (_request("served", images=1), False, 500.0, (JobStatus.SUCCEEDED, None)),
        (_request("failed", images=0), True, 0.0, (JobStatus.FAILED, "job_failed")),
        (_request("interrupted", images=1, n=2), True, 0.0, (JobStatus.FAILED, "gateway_stopped")),
    ],
)
def test_when_an_abandoned_job_ends_and_how(
    request_outcome: RequestOutcome | None,
    owned: bool,
    age: float,
    expected: tuple[JobStatus, str | None] | None,
) -> None:
    abandoned = AbandonedJob(job_row("imgjob_x", 1000.0), request_outcome, owned=owned)
    ending = ending_of(abandoned, now=1000.0 + age, grace_s=120.0)
    if expected is None:
        assert ending is None
        return
    assert ending is not None
    assert (ending.status, None if ending.error is None else ending.error.code) == expected


# -- across replicas (two gateway apps sharing one ledger and output.dir) -------------------


def _two_replicas(serve_gateway: ServeGateway, ledger_url: str) -> tuple[Served, Served]:
    config = {"ledger": {"url": ledger_url}}
    return serve_gateway(config), serve_gateway(config)


def _ledger_of(served: Served) -> Ledger:
    ledger: Ledger | None = served.router.ledger
    assert ledger is not None
    return ledger


def test_the_list_has_every_replicas_jobs_newest_first(
    serve_gateway: ServeGateway, ledger_url: str
) -> None:
    a, b = _two_replicas(serve_gateway, ledger_url)
    first = a.http().post("/v1/images/jobs", json={"prompt": "a fox"}).json()
    assert wait_for_job(a, first["id"])["status"] == "succeeded"
    second = b.http().post("/v1/images/jobs", json={"prompt": "a cat"}).json()
    assert wait_for_job(b, second["id"])["status"] == "succeeded"

    for replica in (a, b):
        listed = replica.http().get("/v1/images/jobs", params={"limit": 5}).json()
        assert listed["object"] == "list"
        assert [item["id"] for item in listed["data"]] == [second["id"], first["id"]]
        assert all(item["status"] == "succeeded" and len(item["file_ids"]) == 1
                   for item in listed["data"])
        newest = replica.http().get("/v1/images/jobs", params={"limit": 1}).json()["data"]
        assert [item["id"] for item in newest] == [second["id"]]


def test_the_list_shows_a_local_job_in_its_live_state(
    serve_gateway: ServeGateway, ledger_url: str
) -> None:
    a, b = _two_replicas(serve_gateway, ledger_url)
    done = b.http().post("/v1/images/jobs", json={"prompt": "a cat"}).json()
    assert wait_for_job(b, done["id"])["status"] == "succeeded"
    # A job running on `a`, whose row is older than its live state.
    job = Job(id="imgjob_live", operation="generate", requested_model=None,
              response_format="url", user=None, created=time.time(), status=JobStatus.RUNNING,
              progress=Progress("runflow", 1, 1, "submitting", 0.1))
    records = a.gateway.jobs.records
    assert records is not None
    asyncio.run(records.save(job))
    a.gateway.jobs._jobs[job.id] = job
    job.note_progress(Progress("runflow", 1, 1, "polling", 2.5))

    for replica, state in ((a, "polling"), (b, "submitting")):  # b has only the row
        listed = replica.http().get("/v1/images/jobs").json()["data"]
        assert [item["id"] for item in listed] == [job.id, done["id"]]
        assert listed[0]["status"] == "running"
        assert listed[0]["progress"]["state"] == state
    del a.gateway.jobs._jobs[job.id]


def test_a_dead_replicas_job_ends_from_its_request_with_files_another_serves(
    serve_gateway: ServeGateway, ledger_url: str
) -> None:
    a, b = _two_replicas(serve_gateway, ledger_url)
    accepted = a.http().post("/v1/images/jobs", json={"prompt": "a fox", "n": 2}).json()
    finished = wait_for_job(a, accepted["id"])
    assert finished["status"] == "succeeded"
    # Replica `a` "dies" after its request was served but before its job's last row: the
    # row is back to its first (running) state, without files, and its owner is dead.
    ledger = _ledger_of(b)
    with ledger.transaction() as conn:
        conn.execute("DELETE FROM gateway_files WHERE job_id = ?", (accepted["id"],))
    orphan(ledger, accepted["id"], status="running", summary_json=json.dumps(accepted))
    running = b.http().get(f"/v1/images/jobs/{accepted['id']}").json()
    assert running["status"] == "running"

    assert asyncio.run(b.gateway.end_orphaned_jobs()) == [accepted["id"]]
    assert asyncio.run(b.gateway.end_orphaned_jobs()) == []  # once
    ended = b.http().get(f"/v1/images/jobs/{accepted['id']}").json()
    assert ended["status"] == "succeeded"
    assert ended["request_id"] == finished["request_id"]
    assert (ended["provider"], ended["served_model"], ended["cost_usd"], ended["images"]) == (
        finished["provider"], finished["served_model"], finished["cost_usd"], 2)
    assert set(ended) - {"result"} == set(finished) - {"result"}  # a normal finish's shape
    assert len(ended["file_ids"]) == 2 and ended["file_ids"] != finished["file_ids"]
    for file_id, item in zip(ended["file_ids"], ended["result"]["data"], strict=True):
        assert item["url"].endswith(f"/v1/files/{file_id}")
        image = b.http().get(f"/v1/files/{file_id}/content")
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    listed = a.http().get("/v1/images/jobs").json()["data"]
    assert [(i["id"], i["status"]) for i in listed] == [(accepted["id"], "succeeded")]


def test_a_job_whose_replica_died_before_its_request_fails_after_the_grace_period(
    serve_gateway: ServeGateway, ledger_url: str
) -> None:
    (b,) = (serve_gateway({"ledger": {"url": ledger_url}}),)
    ledger = _ledger_of(b)
    store = LedgerJobStore(ledger)
    written = time.time()
    asyncio.run(store.save(job_row("imgjob_unbegun", written, request_id="ir-unbegun")))
    orphan(ledger, "imgjob_unbegun")

    def ended_at(now: float) -> list[str]:
        return asyncio.run(end_orphaned_jobs(b.gateway.job_store, clock=lambda: now,
                                             grace_s=120.0))

    assert ended_at(written + 119.0) == []
    assert ended_at(written + 121.0) == ["imgjob_unbegun"]
    body = b.http().get("/v1/images/jobs/imgjob_unbegun").json()
    assert (body["status"], body["status_code"], body["error"]["code"]) == (
        "failed", 503, "gateway_stopped")
    assert "nothing was sent" in body["error"]["message"]
    assert "result" not in body and "file_ids" not in body


def test_a_dead_replicas_job_waits_while_its_request_runs(
    serve_gateway: ServeGateway, ledger_url: str
) -> None:
    a, b = _two_replicas(serve_gateway, ledger_url)
    accepted = a.http().post("/v1/images/jobs", json={"prompt": "a fox"}).json()
    finished = wait_for_job(a, accepted["id"])
    ledger = _ledger_of(b)
    with ledger.transaction() as conn:  # as if its process had died mid-request
        conn.execute("UPDATE requests SET status = 'running' WHERE id = ?",
                     (finished["request_id"],))
    orphan(ledger, accepted["id"], status="running", summary_json=json.dumps(accepted))
    assert asyncio.run(b.gateway.end_orphaned_jobs()) == []
    assert b.http().get(f"/v1/images/jobs/{accepted['id']}").json()["status"] == "running"

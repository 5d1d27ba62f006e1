"""The gateway's jobs and served files in the ledger, so every replica sharing it sees them.

Tables `gateway_jobs` and `gateway_files` (migrations m009, m010). A job's row holds its
summary without images (never input bytes, prompts or keys), the ledger request it runs as,
and the owner id of the process running it (the same owner rows and liveness rule as the
ledger's requests: ledger_owners.py), so a replica killed mid-job can be told from a live
one. `gateway_files` maps file ids to the image paths under the shared `output.dir`.

`GatewayJobStore` is the interface the gateway calls; `LedgerJobStore` implements it on the
ledger's API (`Ledger` for SQLite, `PgLedger` for PostgreSQL: one SQL text for both, the
PostgreSQL adapter translates it). Writes go to the ledger's writer thread (`ledger.aio`:
batched, committed before they return); reads to PostgreSQL's read pool or, on SQLite, to a
worker thread. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..ledger_owners import OWNER_COLUMNS, clock_sql, owner_alive, owner_seen

if TYPE_CHECKING:
    import sqlite3

    from ..ledger import Ledger

__all__ = [
    "AbandonedJob",
    "FileRow",
    "GatewayJobStore",
    "JobRow",
    "JobStatus",
    "LedgerJobStore",
    "RequestOutcome",
]

log = logging.getLogger("imagerouter.gateway")

T = TypeVar("T")


class JobStatus(StrEnum):
    """A gateway job's status (its JSON value in every answer and row)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


_OPEN = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
# Task states after which nothing more arrives for a task (its images are all there is).
_TASK_CLOSED = ("failed", "canceled", "not_sent", "collected")
_TASK_DELIVERED = ("succeeded", "partial_succeeded")


@dataclass(frozen=True)
class JobRow:
    """One job as its row has it. `owner_id` is filled in by `save` (this process)."""

    id: str
    status: JobStatus
    response_format: str
    summary: dict[str, Any]
    created_at: float
    updated_at: float
    request_id: str | None = None


@dataclass(frozen=True)
class FileRow:
    id: str
    job_id: str
    path: str
    format: str
    position: int


@dataclass(frozen=True)
class RequestOutcome:
    """What the ledger says of the request an abandoned job ran as."""

    request_id: str
    status: str  # the ledger's RequestStatus value: running | served | failed | interrupted
    num_images: int  # asked for
    images: tuple[tuple[str, str], ...]  # (path, format) of every image saved, in order
    open_tasks: int  # paid tasks that may still deliver (the sweeper collects them)
    provider: str | None
    model: str | None
    cost_usd: str | None
    billed_usd: str | None
    error: str | None


@dataclass(frozen=True)
class AbandonedJob:
    """A `queued`/`running` job whose process is gone. `request` is None when the ledger
    has no request row for it (its process died before the router began)."""

    job: JobRow
    request: RequestOutcome | None
    # False for a row written before m010 (no owner id): then only its age says it is dead.
    owned: bool = True


class GatewayJobStore(Protocol):
    """Where the gateway keeps its jobs and file ids for the other replicas."""

    async def save(self, job: JobRow, files: Sequence[FileRow] = ()) -> None:
        """Write the job's row (this process owns it) and, once it ended, its files."""

    async def load(self, job_id: str) -> JobRow | None: ...

    async def recent(self, limit: int) -> list[JobRow]:
        """Every replica's jobs, newest first."""

    async def file(self, file_id: str) -> FileRow | None: ...

    async def files_of(self, job_id: str) -> list[FileRow]:
        """A job's files in the job's order."""

    async def abandoned(self) -> list[AbandonedJob]:
        """Open jobs whose owning process is dead, each with its request's outcome."""

    async def end_abandoned(self, job: JobRow, files: Sequence[FileRow]) -> bool:
        """Write an abandoned job's final row and files, only if it is still open (another
        sweeper may have ended it first); True when this call ended it."""


class LedgerJobStore:
    """`GatewayJobStore` on the ledger (either backend)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __repr__(self) -> str:
        return f"LedgerJobStore({self._ledger!r})"

    # -- how calls reach the ledger ------------------------------------------------------

    async def _read(self, fn: Callable[[], T]) -> T:
        """`fn()` (which reads through `ledger.reading()`) off the event loop."""
        ledger = self._ledger
        reads = getattr(ledger, "reads", None)  # PgLedger's read pool (pg_reads.py)
        pooled = getattr(ledger, "reads_pooled", None)
        if reads is not None and pooled is not None and pooled():
            result: T = await reads.run(fn)
            return result
        return await asyncio.to_thread(fn)

    # -- writes --------------------------------------------------------------------------

    async def save(self, job: JobRow, files: Sequence[FileRow] = ()) -> None:
        await self._ledger.aio.call(self._write, job, files, only_open=False)

    async def end_abandoned(self, job: JobRow, files: Sequence[FileRow]) -> bool:
        return await self._ledger.aio.call(self._write, job, files, only_open=True)

    def _write(self, job: JobRow, files: Sequence[FileRow], *, only_open: bool) -> bool:
        """On the writer thread: the row and its files in one transaction. `only_open`:
        update a job still queued/running (keeping its owner) instead of replacing it."""
        summary = json.dumps(job.summary)
        with self._ledger.transaction() as conn:
            if only_open:
                changed = conn.execute(
                    "UPDATE gateway_jobs SET status = ?, summary_json = ?, updated_at = ?,"
                    " request_id = COALESCE(?, request_id)"
                    " WHERE id = ? AND status IN (?, ?)",
                    (job.status.value, summary, job.updated_at, job.request_id, job.id, *_OPEN),
                ).rowcount
                if changed != 1:
                    return False
            else:
                owner_id = self._ledger.owners.register(conn)  # heartbeat: we run it
                conn.execute(
                    "INSERT OR REPLACE INTO gateway_jobs (id, status, response_format,"
                    " summary_json, updated_at, request_id, owner_id, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, job.status.value, job.response_format, summary, job.updated_at,
                     job.request_id, owner_id, job.created_at),
                )
            for f in files:
                conn.execute(
                    "INSERT OR REPLACE INTO gateway_files (id, job_id, path, format,"
                    " position) VALUES (?, ?, ?, ?, ?)",
                    (f.id, f.job_id, f.path, f.format, f.position),
                )
        return True

    # -- reads ---------------------------------------------------------------------------

    async def load(self, job_id: str) -> JobRow | None:
        def read() -> JobRow | None:
            with self._ledger.reading() as conn:
                row = conn.execute(
                    f"SELECT {_JOB_COLUMNS} FROM gateway_jobs j WHERE j.id = ?",  # noqa: S608 - constants only
                    (job_id,),
                ).fetchone()
            return None if row is None else _job(row)

        return await self._read(read)

    async def recent(self, limit: int) -> list[JobRow]:
        def read() -> list[JobRow]:
            with self._ledger.reading() as conn:
                rows = conn.execute(
                    f"SELECT {_JOB_COLUMNS} FROM gateway_jobs j"  # noqa: S608 - constants only
                    " ORDER BY j.created_at DESC, j.id DESC LIMIT ?",
                    (max(0, limit),),
                ).fetchall()
            return [_job(row) for row in rows]

        return await self._read(read)

    async def file(self, file_id: str) -> FileRow | None:
        def read() -> FileRow | None:
            with self._ledger.reading() as conn:
                row = conn.execute(
                    "SELECT id, job_id, path, format, position FROM gateway_files WHERE id = ?",
                    (file_id,),
                ).fetchone()
            return None if row is None else _file(row)

        return await self._read(read)

    async def files_of(self, job_id: str) -> list[FileRow]:
        def read() -> list[FileRow]:
            with self._ledger.reading() as conn:
                rows = conn.execute(
                    "SELECT id, job_id, path, format, position FROM gateway_files"
                    " WHERE job_id = ? ORDER BY position", (job_id,)
                ).fetchall()
            return [_file(row) for row in rows]

        return await self._read(read)

    async def abandoned(self) -> list[AbandonedJob]:
        return await self._read(self._abandoned)

    def _abandoned(self) -> list[AbandonedJob]:
        with self._ledger.reading() as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS}, j.owner_id, {OWNER_COLUMNS},"  # noqa: S608 - constants only
                f" {clock_sql(conn)} AS ledger_now"
                " FROM gateway_jobs j LEFT JOIN owners o ON o.id = j.owner_id"
                " WHERE j.status IN (?, ?) ORDER BY j.created_at",
                _OPEN,
            ).fetchall()
            found = []
            for row in rows:
                # The rule the sweeper applies to requests: only a dead owner's are ours.
                if owner_alive("running", None, owner_seen(row)):
                    continue
                job = _job(row)
                request = None if job.request_id is None else _outcome(conn, job.request_id)
                found.append(AbandonedJob(job, request, owned=row["owner_id"] is not None))
        return found


# Every query names the table `gateway_jobs j`.
_JOB_COLUMNS = (
    "j.id, j.status, j.response_format, j.summary_json, j.created_at, j.updated_at,"
    " j.request_id"
)


def _job(row: Any) -> JobRow:
    summary = json.loads(row[3])
    created = row[4] if row[4] is not None else summary.get("created") or row[5]
    return JobRow(
        id=str(row[0]),
        status=JobStatus(str(row[1])),
        response_format=str(row[2]),
        summary=summary,
        created_at=float(created),
        updated_at=float(row[5]),
        request_id=None if row[6] is None else str(row[6]),
    )


def _file(row: Any) -> FileRow:
    return FileRow(str(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4]))


def _outcome(conn: sqlite3.Connection, request_id: str) -> RequestOutcome | None:
    request = conn.execute(
        "SELECT r.status, r.request_json, r.cost_usd, r.billed_usd, r.error,"
        " COALESCE(r.provider, (SELECT a.provider FROM attempts a WHERE a.request_id = r.id"
        "  ORDER BY a.attempt_no DESC LIMIT 1)),"
        " COALESCE(r.served_model, (SELECT a.model FROM attempts a WHERE a.request_id = r.id"
        "  ORDER BY a.attempt_no DESC LIMIT 1))"
        " FROM requests r WHERE r.id = ?",
        (request_id,),
    ).fetchone()
    if request is None:
        return None
    images = conn.execute(
        "SELECT i.path, i.format FROM images i JOIN tasks t ON t.id = i.task_id"
        " WHERE i.request_id = ? ORDER BY t.created_at, t.rowid, i.idx",
        (request_id,),
    ).fetchall()
    tasks = conn.execute(
        "SELECT t.state, t.num_images, t.image_urls_json,"
        " (SELECT COUNT(*) FROM images i WHERE i.task_id = t.id)"
        " FROM tasks t WHERE t.request_id = ?",
        (request_id,),
    ).fetchall()
    asked = json.loads(request[1])
    n = asked.get("n", 1) if isinstance(asked, dict) else 1
    return RequestOutcome(
        request_id=request_id,
        status=str(request[0]),
        num_images=n if isinstance(n, int) and n > 0 else 1,
        images=tuple((str(path), str(fmt)) for path, fmt in images),
        open_tasks=sum(1 for task in tasks if _task_open(task)),
        provider=request[5],
        model=request[6],
        cost_usd=request[2],
        billed_usd=request[3],
        error=request[4],
    )


def _task_open(task: Any) -> bool:
    """Whether a task may still deliver images (accepted or possibly billed, not all saved)."""
    state, expected, urls, saved = str(task[0]), int(task[1]), json.loads(task[2]), int(task[3])
    if state in _TASK_CLOSED:
        return False
    if state in _TASK_DELIVERED:
        return saved < (len(urls) if urls else expected)
    return True  # submitting, accepted, timed_out, unknown: the sweeper is on it

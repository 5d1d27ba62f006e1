"""The gateway's job store: every images call runs as a job, synchronous ones included.

A job is an asyncio task the HTTP request merely waits for, so a client that disconnects
does not cancel the paid work: the job finishes, its images reach disk and the ledger, and
`GET /v1/images/jobs/{id}` shows it. Jobs live in memory (bounded; the oldest finished ones
are forgotten first); the ledger is the durable record. Each job is given the ledger request
id it runs as before it starts (`ledger_request_id`), and with a ledger `JobRecords` writes
the job's row (summary, request id, this process as its owner) when it starts and when it
ends, with its file ids, through the job store (stores/gateway_jobs.py), so any replica
answers `GET /v1/images/jobs` and `/v1/images/jobs/{id}`, and the sweeper of another replica
ends the job of one that died (gateway/orphaned_jobs.py).

The router reports through its `on_attempt` / `on_result` hooks, which run inside the job's
task; a context variable tells the hook which job the event belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..hookspecs import hookimpl
from ..pricing import quantize
from ..routing import new_request_id
from ..stores.gateway_jobs import FileRow, JobRow, JobStatus
from .errors import ApiError, api_error_from
from .files import FileStore, StoreOf

if TYPE_CHECKING:
    from ..events import AttemptEvent, ResultEvent
    from ..execution import Progress
    from ..plugins import Plugins
    from ..result import GenerationResult
    from .openai_shapes import AnswerShape, ImageCall, ResponseFormat

__all__ = [
    "CURRENT_JOB",
    "Job",
    "JobRecords",
    "JobStatus",
    "JobStore",
    "StoredJob",
    "install_event_relay",
]

log = logging.getLogger("imagerouter.gateway")

EventSink = Callable[["AttemptEvent | ResultEvent"], None]

CURRENT_JOB: contextvars.ContextVar[Job | None] = contextvars.ContextVar(
    "imagerouter_gateway_job", default=None
)
_RELAY_NAME = "imagerouter-gateway-job-events"


@dataclass
class Job:
    """One images call and, once it ends, its result or error."""

    id: str
    operation: str
    requested_model: str | None
    response_format: ResponseFormat
    user: str | None
    created: float
    call: ImageCall | None = field(default=None, repr=False)  # dropped when done (input bytes)
    status: JobStatus = JobStatus.QUEUED
    request_id: str | None = None  # as the router reports it (a replay: the first request's)
    # The id the router is asked to run the request as: in the job's row before anything is
    # paid, so the request of a job whose replica died is found (orphaned_jobs.py).
    ledger_request_id: str | None = None
    progress: Progress | None = None
    result: GenerationResult | None = None
    error: ApiError | None = None
    file_ids: list[str] = field(default_factory=list)
    completed: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    sink: EventSink | None = field(default=None, repr=False)
    shape: AnswerShape | None = field(default=None, repr=False)  # what the answer echoes
    # Partial images a streaming backend sent (encoded bytes), for `stream: true` answers.
    partials: list[bytes] = field(default_factory=list, repr=False)
    # The images served (a local re-encode for output_compression, else the saved ones).
    served_paths: list[Path] = field(default_factory=list, repr=False)
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # Set once the job's first row is written (or there is nowhere to write it): a 202 goes
    # out only after, so any replica that shares the ledger finds the job it names.
    recorded: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def done(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)

    def note_progress(self, progress: Progress) -> None:
        self.progress = progress
        # A backend that streams hands each partial image on with its progress note.
        partial = getattr(progress, "partial_image", None)
        if isinstance(partial, bytes | bytearray) and partial:
            self.partials.append(bytes(partial))
            self.changed.set()

    def note_event(self, event: AttemptEvent | ResultEvent) -> None:
        self.request_id = self.request_id or event.request_id
        if self.sink is not None:
            self.sink(event)

    def summary(self) -> dict[str, Any]:
        """The job without its images (they are added by the responder)."""
        out: dict[str, Any] = {
            "id": self.id,
            "object": "image.job",
            "status": self.status,
            "operation": self.operation,
            "model": self.requested_model,
            "created": int(self.created),
            "completed_at": None if self.completed is None else int(self.completed),
            "request_id": self.request_id,
            "user": self.user,
        }
        if self.progress is not None and not self.done:
            p = self.progress
            out["progress"] = {"provider": p.provider, "task": p.task, "tasks": p.tasks,
                               "state": p.state, "elapsed_s": round(p.elapsed_s, 3)}
        if self.result is not None:
            r = self.result
            out.update(
                provider=r.provider,
                served_model=r.model,
                cost_usd=str(quantize(r.cost_usd)),
                billed_usd=None if r.billed_usd is None else str(quantize(r.billed_usd)),
                images=len(r.images),
                file_ids=list(self.file_ids),  # GET /v1/files/{id} (with the key)
            )
        if self.error is not None:
            out["error"] = self.error.body()["error"]
            out["status_code"] = self.error.status
        return out


Runner = Callable[[Job], Awaitable["GenerationResult"]]
Finisher = Callable[[Job], None]


@dataclass(frozen=True)
class StoredJob:
    """A job as the ledger has it (possibly another replica's)."""

    id: str
    status: JobStatus
    response_format: str
    summary: dict[str, Any]
    created: float = 0.0


class JobRecords:
    """Jobs and their file ids in the job store, for every replica that shares it. Every
    call is async and never blocks the loop; a store that fails is logged, never fatal."""

    def __init__(self, store_of: StoreOf, files: FileStore) -> None:
        self.store_of = store_of
        self._files = files

    async def save(self, job: Job) -> None:
        """Write the job's row (and, once done, its file ids). Never fails the job: a
        ledger outage only means other replicas cannot see it."""
        row = JobRow(
            id=job.id,
            status=job.status,
            response_format=job.response_format,
            summary=job.summary(),
            created_at=job.created,
            updated_at=time.time(),
            request_id=job.request_id or job.ledger_request_id,
        )
        files = []
        if job.done:
            for position, file_id in enumerate(job.file_ids):
                stored = self._files.local(file_id)
                if stored is not None:
                    files.append(FileRow(stored.id, job.id, str(stored.path), stored.format,
                                         position))
        try:
            store = self.store_of()
            if store is not None:
                await store.save(row, files)
        except Exception as exc:
            log.warning("job %s: not recorded for other replicas (%s)", job.id,
                        type(exc).__name__)

    async def load(self, job_id: str) -> StoredJob | None:
        if not job_id.startswith("imgjob_"):
            return None
        try:
            store = self.store_of()
            row = None if store is None else await store.load(job_id)
        except Exception as exc:
            log.warning("gateway jobs: the ledger is unreadable (%s)", type(exc).__name__)
            return None
        return None if row is None else _stored(row)

    async def recent(self, limit: int) -> list[StoredJob] | None:
        """Every replica's newest jobs; None without a store or when it is unreadable."""
        try:
            store = self.store_of()
            if store is None:
                return None
            rows = await store.recent(limit)
        except Exception as exc:
            log.warning("gateway jobs: the ledger is unreadable (%s)", type(exc).__name__)
            return None
        return [_stored(row) for row in rows]


def _stored(row: JobRow) -> StoredJob:
    return StoredJob(row.id, row.status, row.response_format, row.summary, row.created_at)


class JobStore:
    """Jobs by id, each running in its own task until it ends."""

    def __init__(
        self,
        *,
        max_jobs: int = 10_000,
        clock: Callable[[], float] = time.time,
        records: JobRecords | None = None,
    ) -> None:
        self.max_jobs = max_jobs
        self.clock = clock
        self.records = records
        self._jobs: dict[str, Job] = {}

    def start(
        self,
        call: ImageCall,
        runner: Runner,
        *,
        on_done: Finisher | None = None,
        sink: EventSink | None = None,
    ) -> Job:
        """Create a job and start running it now, on the running event loop."""
        job = Job(
            id=f"imgjob_{secrets.token_hex(12)}",
            operation=call.operation,
            requested_model=call.requested_model,
            response_format=call.response_format,
            user=call.user,
            created=self.clock(),
            call=call,
            sink=sink,
            shape=call.answer_shape(),
            ledger_request_id=new_request_id(),
        )
        self._jobs[job.id] = job
        self._evict()
        job.task = asyncio.get_running_loop().create_task(
            self._supervise(job, runner, on_done), name=job.id
        )
        return job

    async def _supervise(self, job: Job, runner: Runner, on_done: Finisher | None) -> None:
        token = CURRENT_JOB.set(job)
        job.status = JobStatus.RUNNING
        try:
            if self.records is not None:
                await self.records.save(job)
        finally:
            job.recorded.set()
        try:
            job.result = await runner(job)
            # The result's own id (a replayed Idempotency-Key's is the first request's).
            job.request_id = getattr(job.result, "request_id", None) or job.request_id
            job.status = JobStatus.SUCCEEDED
        except asyncio.CancelledError:
            job.error = ApiError(
                503,
                "the gateway stopped before this job finished; the ledger keeps it "
                "(`imagerouter resume` collects paid images)",
                type="server_error",
                code="gateway_stopped",
            )
            job.status = JobStatus.FAILED
            raise
        except Exception as exc:
            job.error = api_error_from(exc, request_id=job.request_id)
            job.status = JobStatus.FAILED
            if job.error.status >= 500:
                log.warning("job %s failed: %s", job.id, job.error.message)
        finally:
            CURRENT_JOB.reset(token)
            job.completed = self.clock()
            job.call = None
            if on_done is not None:
                try:
                    on_done(job)
                except Exception:
                    log.exception("finishing job %s failed", job.id)
            if self.records is not None:
                # Shielded: a cancelled job (shutdown) is still recorded as ended.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self.records.save(job))
            job.changed.set()

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def recent(self, limit: int) -> list[Job]:
        """This process's newest jobs (in memory)."""
        jobs = list(self._jobs.values())
        return jobs[::-1][:limit]

    async def listing(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` jobs of every replica sharing the store (this one's alone
        without a store, or while it is unreadable), as summaries: a job running here shows
        its live state (progress), and one not yet in the store is there too."""
        local = self.recent(limit)
        stored = None if self.records is None else await self.records.recent(limit)
        if stored is None:
            return [job.summary() for job in local]
        merged: dict[str, tuple[float, dict[str, Any]]] = {}
        for row in stored:
            live = self._jobs.get(row.id)
            merged[row.id] = (row.created, live.summary() if live is not None else row.summary)
        for job in local:
            merged.setdefault(job.id, (job.created, job.summary()))
        newest = sorted(merged.values(), key=lambda item: item[0], reverse=True)
        return [summary for _, summary in newest[:limit]]

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in JobStatus}
        for job in self._jobs.values():
            counts[job.status.value] += 1
        return counts

    def running(self) -> list[asyncio.Task[None]]:
        return [job.task for job in self._jobs.values() if job.task and not job.task.done()]

    async def drain(self, seconds: float) -> None:
        """Give running jobs `seconds` to finish, then cancel the rest (the ledger keeps
        what they were doing)."""
        tasks = self.running()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    def _evict(self) -> None:
        excess = len(self._jobs) - self.max_jobs
        if excess <= 0:
            return
        for job_id in [job.id for job in self._jobs.values() if job.done][:excess]:
            del self._jobs[job_id]


class _JobEventRelay:
    """Forwards the router's events to the job whose task emitted them."""

    @hookimpl
    def on_attempt(self, event: AttemptEvent) -> None:
        job = CURRENT_JOB.get()
        if job is not None:
            job.note_event(event)

    @hookimpl
    def on_result(self, event: ResultEvent) -> None:
        job = CURRENT_JOB.get()
        if job is not None:
            job.note_event(event)


_RELAY = _JobEventRelay()


def install_event_relay(plugins: Plugins) -> None:
    """Register the relay once per plugin manager (it only acts inside gateway jobs).
    Registered on the manager directly, so the provider cache is left alone."""
    if plugins.manager.get_plugin(_RELAY_NAME) is None:
        plugins.manager.register(_RELAY, name=_RELAY_NAME)

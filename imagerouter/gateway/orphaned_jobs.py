"""Ending the jobs of a replica that died: the gateway sweeper's step after each pass.

A replica killed mid-job (SIGKILL, a lost machine) leaves its `gateway_jobs` rows `queued` or
`running`. The sweeper (resume.py) collects its requests' paid images and closes the
requests; then, here, each job whose owner is dead (the ledger's owner rule,
ledger_owners.py) ends from what its request became, in the summary shape a normal finish
writes:
- its request still runs (its tasks are being collected): left for a later pass;
- every image asked for is on disk: `succeeded`, each image given a file id in
  `gateway_files`, so `GET /v1/files/{id}` on any replica serves it;
- otherwise `failed`, saying what the request became (and the file ids of any images it has);
- no request row (the replica died before the router began, so nothing was sent): `failed`
  once the row is `ABANDONED_GRACE_S` old.
A row written before m010 names no owner: it is ended only once that old too. The final row
is written only if the job is still open, so two sweepers never both end one job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from decimal import Decimal

from ..pricing import quantize
from ..stores.gateway_jobs import AbandonedJob, FileRow, JobRow, JobStatus, RequestOutcome
from .errors import ApiError
from .files import StoreOf, new_file_id

__all__ = ["ABANDONED_GRACE_S", "Ending", "end_orphaned_jobs", "ending_of"]

log = logging.getLogger("imagerouter.gateway")

# How old the row of a job with no request (or no owner) must be before it is ended: a
# replica's clock may run behind this one's, and a job only starts its request after its row.
ABANDONED_GRACE_S = 120.0


@dataclass(frozen=True)
class Ending:
    """How an abandoned job ends."""

    status: JobStatus
    error: ApiError | None = None


def ending_of(abandoned: AbandonedJob, *, now: float, grace_s: float) -> Ending | None:
    """The job's ending, or None while it is not time yet."""
    old = now - abandoned.job.updated_at >= grace_s
    if not abandoned.owned and not old:
        return None
    request = abandoned.request
    if request is None:
        if not old:
            return None
        return Ending(JobStatus.FAILED, ApiError(
            503,
            "the gateway replica running this job stopped before its request began; nothing "
            "was sent to a backend. Send it again.",
            type="server_error", code="gateway_stopped",
        ))
    if request.status == "running" or request.open_tasks:
        return None  # the sweeper is still collecting what its request paid for
    if request.images and len(request.images) >= request.num_images:
        return Ending(JobStatus.SUCCEEDED)
    if request.status == "failed":
        return Ending(JobStatus.FAILED, ApiError(
            502, f"request {request.request_id} failed: {request.error or 'no detail'}",
            type="server_error", code="job_failed",
        ))
    return Ending(JobStatus.FAILED, ApiError(
        503,
        f"the gateway replica running this job stopped; its request {request.request_id} "
        f"ended {request.status} with {len(request.images)} of {request.num_images} images "
        "collected (the ledger keeps it)",
        type="server_error", code="gateway_stopped",
    ))


def _money(text: str | None) -> str | None:
    return None if text is None else str(quantize(Decimal(text)))


def _final(
    job: JobRow, ending: Ending, request: RequestOutcome | None, file_ids: list[str], now: float
) -> JobRow:
    summary = dict(job.summary)
    summary.pop("progress", None)
    summary.update(
        status=ending.status.value,
        completed_at=int(now),
        request_id=None if request is None else request.request_id,
    )
    if ending.status is JobStatus.SUCCEEDED and request is not None:
        summary.update(
            provider=request.provider,
            served_model=request.model,
            cost_usd=_money(request.cost_usd) or "0",
            billed_usd=_money(request.billed_usd),
            images=len(file_ids),
            file_ids=file_ids,
        )
    if ending.error is not None:
        summary["error"] = ending.error.body()["error"]
        summary["status_code"] = ending.error.status
        if file_ids:  # what it did collect stays fetchable
            summary["file_ids"] = file_ids
    return JobRow(
        id=job.id,
        status=ending.status,
        response_format=job.response_format,
        summary=summary,
        created_at=job.created_at,
        updated_at=now,
        request_id=None if request is None else request.request_id,
    )


async def end_orphaned_jobs(
    store_of: StoreOf,
    *,
    running_here: Container[str] = (),
    clock: Callable[[], float] = time.time,
    grace_s: float = ABANDONED_GRACE_S,
) -> list[str]:
    """End the open jobs of dead replicas that can be ended now; the ids of those ended.
    `running_here`: this process's own job ids (never touched). Never raises: a failure is
    logged and the next pass tries again."""
    ended: list[str] = []
    try:
        store = store_of()  # builds the gateway's Router on first use: may fail
        if store is None:
            return []
        abandoned = await store.abandoned()
    except Exception as exc:
        log.warning("gateway jobs: abandoned jobs unreadable (%s)", type(exc).__name__)
        return []
    for item in abandoned:
        if item.job.id in running_here:
            continue
        now = clock()
        ending = ending_of(item, now=now, grace_s=grace_s)
        if ending is None:
            continue
        images = () if item.request is None else item.request.images
        files = [FileRow(new_file_id(), item.job.id, path, fmt, position)
                 for position, (path, fmt) in enumerate(images)]
        final = _final(item.job, ending, item.request, [f.id for f in files], now)
        try:
            if await store.end_abandoned(final, files):
                ended.append(item.job.id)
                log.info("job %s: ended %s (its replica is gone)", item.job.id,
                         ending.status.value)
        except Exception as exc:
            log.warning("job %s: could not be ended (%s)", item.job.id, type(exc).__name__)
    return ended

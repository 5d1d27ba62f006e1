"""The Runflow emulator's state: its options, runs, uploads, and how a run object looks.

A run's status is a pure function of the (injectable) clock via `EmulatedJob.state`, unless a
test forces one with `force_status` (for statuses the timeline never reaches on its own:
`partial_succeeded`, `canceled`, `cancelled`, `dispatching`, `errored`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from imagerouter.emulation import EmulatedJob, EmulatorOptions, EmulatorState
from imagerouter.pricing import PriceTable

__all__ = [
    "FORCEABLE_STATUSES",
    "PendingUpload",
    "RunflowEmulatorOptions",
    "RunflowEmulatorState",
]

OutputShape = Literal["outputs", "image_urls"]
FORCEABLE_STATUSES = frozenset(
    {
        "queued",
        "dispatching",
        "running",
        "succeeded",
        "partial_succeeded",
        "failed",
        "errored",
        "canceled",
        "cancelled",
    }
)


@dataclass
class RunflowEmulatorOptions(EmulatorOptions):
    """The shared emulator options plus Runflow's own knobs."""

    # The model schemas cap num_images at 4 (the marketing page says 10).
    max_images_per_run: int = 4
    # "outputs" (the normalized shape) or "image_urls" (the callbacks page's example), to
    # exercise the client's fallback.
    output_shape: OutputShape = "outputs"
    # Seconds, monotonic: tests inject a fake clock instead of sleeping.
    clock: Callable[[], float] = time.monotonic


@dataclass
class PendingUpload:
    """An asset upload between its three steps."""

    asset_id: str
    filename: str
    mime_type: str
    size_bytes: int
    file_id: str | None = None  # set once the PUT arrived


@dataclass
class RunflowEmulatorState(EmulatorState):
    """The shared emulator state plus Runflow's asset uploads between their three steps and
    the wall time run timestamps are drawn from. Its clock is `options.clock`."""

    options: RunflowEmulatorOptions
    uploads: dict[str, PendingUpload] = field(default_factory=dict)
    # Wall time of clock() == 0, so run timestamps follow the injected clock.
    _epoch: datetime = field(default_factory=lambda: datetime.now(UTC), repr=False)
    _epoch_clock: float = 0.0

    def __post_init__(self) -> None:
        self.clock = self.options.clock
        super().__post_init__()
        self._epoch_clock = self.clock()

    def iso(self, at: float | None) -> str | None:
        if at is None:
            return None
        moment = self._epoch + timedelta(seconds=at - self._epoch_clock)
        return moment.isoformat()

    # -- test hooks ------------------------------------------------------------------------

    def force_status(
        self,
        run_id: str,
        status: str,
        *,
        failure_code: str | None = None,
        failure_message: str | None = None,
    ) -> None:
        """Pin a run's `status_code` (test hook). Succeeded and partial runs are billed
        (partial: for the images delivered); the others are not."""
        if status not in FORCEABLE_STATUSES:
            raise ValueError(f"{status!r} is not a Runflow status")
        job = self.book.get(run_id)
        if job is None:
            raise KeyError(run_id)
        job.extra["forced_status"] = status
        job.extra["failure_code"] = failure_code
        job.extra["failure_message"] = failure_message
        if job.settled:
            return
        job.settled = True
        if status == "succeeded":
            self.counters.add_billed(job.cost)
        elif status == "partial_succeeded":
            self.counters.add_billed(job.cost * delivered(job) / job.count)
        elif status in ("failed", "errored"):
            self.counters.bump("failed")

    def runs(self) -> list[EmulatedJob]:
        return self.book.all()

    # -- run objects -----------------------------------------------------------------------

    def status_of(self, job: EmulatedJob) -> str:
        forced = job.extra.get("forced_status")
        return str(forced) if forced else job.state(self.now())

    def run_object(self, job: EmulatedJob, base_url: str) -> dict[str, Any]:
        """The run as `GET /v1/runs/{id}` shows it (the documented fields)."""
        status = self.status_of(job)
        started = job.created_at + job.duration * 0.2
        done = status in (
            "succeeded",
            "partial_succeeded",
            "failed",
            "errored",
            "canceled",
            "cancelled",
        )
        completed = job.created_at + job.duration if done else None
        output: Any = None
        cost: str | None = None
        if status in ("succeeded", "partial_succeeded"):
            files = self.book.files_for(job)
            if status == "partial_succeeded":
                files = files[: delivered(job)]
            output = self._output([f"{base_url}/files/{file_id}" for file_id in files])
            cost = str(job.cost if status == "succeeded" else job.cost * len(files) / job.count)
        failure_code = failure_message = None
        if status in ("failed", "errored"):
            failure_code = job.extra.get("failure_code") or "PROVIDER_ERROR"
            failure_message = job.extra.get("failure_message") or "the model run failed"
        return {
            "id": job.id,
            "flow_id": None,
            "model_id": job.extra["model_id"],
            "target_type": "model",
            "org_id": "org_emulator",
            "status_code": status,
            "source_code": "api",
            "input": job.extra["input"],
            "output": output,
            "context": None,
            "duration_ms": round(job.duration * 1000) if done else None,
            "cost": cost,
            "cost_breakdown": {},
            "batch_id": None,
            "client_ref": job.extra.get("client_ref"),
            "request_id": job.extra.get("request_id"),
            "created_at": self.iso(job.created_at),
            "started_at": self.iso(started) if status not in ("queued", "dispatching") else None,
            "completed_at": self.iso(completed),
            "callback_url": job.extra.get("callback_url"),
            "metadata": job.extra.get("metadata"),
            "failure_code": failure_code,
            "failure_message": failure_message,
            "failure_stage_code": "execution" if failure_code else None,
        }

    def _output(self, urls: list[str]) -> dict[str, Any]:
        if self.options.output_shape == "image_urls":
            return {"image_urls": urls}
        return {
            "outputs": [{"url": url, "type": "image"} for url in urls],
            "seed": None,
            "timing": None,
            "nsfw_detected": None,
        }

    def new_upload(self, filename: str, mime_type: str, size_bytes: int) -> PendingUpload:
        upload = PendingUpload(str(uuid.uuid4()), filename, mime_type, size_bytes)
        with self.lock:
            self.uploads[upload.asset_id] = upload
        return upload

    def upload(self, asset_id: str) -> PendingUpload | None:
        with self.lock:
            return self.uploads.get(asset_id)


def delivered(job: EmulatedJob) -> int:
    """Images a partially succeeded run delivers: all but one, at least one."""
    return max(1, job.count - 1)


def job_cost(
    prices: PriceTable, model: str, operation: str, quality: str, size: str, count: int
) -> Decimal:
    """What a run of `count` images costs, from the shipped price table (0 when unpriced)."""
    price = prices.lookup(model, operation, quality, size)
    return (price or Decimal(0)) * count

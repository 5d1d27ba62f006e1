"""Reconcile a possibly-billed task: a create that got no answer, whose look-up failed too.

Such a task is `unknown` in the ledger, with the create exactly as it was sent (`spec_json`).
It is looked up again later by the provider's own means, through `ProviderClient.reconcile`
(RunAPI: the same create with the same Idempotency-Key; Runflow: a search by `client_ref`),
never by a second create under a new key. Three places call it: `imagerouter resume`, the
gateway's sweeper (resume.py), and the next request routed to the same backend (bounded and
rate-limited here). A task found becomes `accepted`, and `resume` polls and collects it; a
task proven absent becomes `not_sent` (and its reservation is settled again).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .errors import ProviderError
from .ledger_owners import owner_alive  # whether a request's process still runs it
from .provider import Submission, TaskSpec
from .urls import strip_credentials

if TYPE_CHECKING:
    from .ledger import Ledger, UnknownTask
    from .route_deps import RouteDeps

__all__ = [
    "ABSENT_AFTER_S",
    "RECHECK_S",
    "WATCH_NOTE",
    "Reconciled",
    "RecoveryState",
    "owner_alive",
    "reconcile_unknown",
    "spec_of",
    "task_from_spec",
]

log = logging.getLogger("imagerouter.reconcile")

# A look-up that finds nothing proves absence only once the provider has had time to list
# the task (a search index may lag the create by a few seconds).
ABSENT_AFTER_S = 60.0
# A later request re-checks a backend's unknown tasks at most this often, and at most
# `PER_REQUEST` of them, so recovery never weighs on the request that triggers it.
RECHECK_S = 30.0
PER_REQUEST = 2

WATCH_NOTE = (
    "imagerouter keeps looking it up (`imagerouter resume`, the gateway's sweeper, or the "
    "next request to this backend) and collects its images if it exists"
)


class Reconciled(StrEnum):
    FOUND = "found"  # the task exists: now `accepted`, to be polled and collected
    ABSENT = "absent"  # the task provably does not exist: `not_sent`, nothing billed
    UNKNOWN = "unknown"  # still unsettled: looked up again later


@dataclass
class RecoveryState:
    """Per-router bookkeeping: interruptions to report, and which backends were checked
    when (so a burst of requests does not look the same tasks up again and again)."""

    # The latest only: a long-lived gateway cancels requests at every shutdown.
    interruptions: deque[Any] = field(default_factory=lambda: deque(maxlen=64))
    checked_at: dict[str, float] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)  # task ids being reconciled or collected now


def spec_of(task: TaskSpec, *, first_image: int) -> dict[str, Any]:
    """The create as sent, for the ledger: enough to send it again byte for byte (a RunAPI
    replay must carry the same body) or to look it up. Holds no credential."""
    return {
        "task_id": task.task_id,
        "idempotency_key": task.idempotency_key,
        "prompt": task.prompt,
        "model": task.model,
        "operation": task.operation,
        "num_images": task.num_images,
        "params": dict(task.params),
        # A URL's `user:password@` is never stored (a replay of such a create sends it bare).
        "input_urls": [strip_credentials(url) for url in task.input_urls],
        "mask_url": strip_credentials(task.mask_url) if task.mask_url else None,
        "metadata": dict(task.metadata),
        "callback_url": task.callback_url,
        "first_image": first_image,
    }


def task_from_spec(record: UnknownTask) -> TaskSpec:
    """The TaskSpec a lost create was sent with (from `spec_json`), or, for rows written
    before specs were kept, what the ledger still knows (enough for a look-up by task id)."""
    spec: Mapping[str, Any] = record.spec or {}
    metadata = spec.get("metadata") or {"imagerouter_request": record.request_id}
    return TaskSpec(
        task_id=record.task_id,
        idempotency_key=record.idempotency_key,
        prompt=str(spec.get("prompt", "")),
        model=spec.get("model", record.model),
        operation=spec.get("operation", record.operation),
        num_images=int(spec.get("num_images", record.num_images)),
        params=dict(spec.get("params") or {}),
        input_urls=tuple(spec.get("input_urls") or ()),
        mask_url=spec.get("mask_url"),
        metadata={str(k): str(v) for k, v in dict(metadata).items()},
        callback_url=spec.get("callback_url"),
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def reconcile_unknown(
    deps: RouteDeps, record: UnknownTask, *, now: datetime | None = None
) -> tuple[Reconciled, Submission | None, str]:
    """Look one unknown task up by the provider's own means; record what that settles."""
    ledger = deps.ledger
    assert ledger is not None
    if record.provider not in deps.catalog.entries:
        return Reconciled.UNKNOWN, None, f"provider {record.provider} is not installed"
    provider = deps.provider(record.provider)
    moment = now or _utc_now()
    age = (moment - record.created_at).total_seconds()
    window = provider.reconcile_window_s
    if window is not None and age > window:
        return Reconciled.UNKNOWN, None, (
            f"the create is {age / 3600:.1f} h old, past what {provider.name} can settle "
            f"safely ({window / 3600:g} h); look for client_ref {record.task_id} in its "
            "dashboard"
        )
    if provider.idempotent_creates and record.request_status == "served":
        # The request got its images elsewhere (on_unknown_submission: failover). A replay of
        # a create that never arrived would create the task now: a charge nobody needs.
        return Reconciled.UNKNOWN, None, (
            "its request was served by another backend, so it is not replayed (that could "
            f"create it now); look for client_ref {record.task_id} in the provider's dashboard"
        )
    if provider.idempotent_creates and record.spec is None:
        return Reconciled.UNKNOWN, None, (
            "recorded before imagerouter kept the create, so it cannot be replayed; look for "
            f"client_ref {record.task_id} in the provider's dashboard"
        )
    task = task_from_spec(record)
    try:
        found = await deps.client_for(record.provider).reconcile(task)
    except NotImplementedError:
        return Reconciled.UNKNOWN, None, f"{provider.name} has no way to look a task up"
    except ProviderError as exc:
        # A failed look-up, or a refused replay (which does not prove the task absent).
        await ledger.aio.task_checked(record.task_id, error=str(exc))
        return Reconciled.UNKNOWN, None, f"the look-up failed: {exc}"
    if found is None:
        if age < ABSENT_AFTER_S:
            await ledger.aio.task_checked(record.task_id)
            return Reconciled.UNKNOWN, None, "not listed yet; looked up again later"
        await ledger.aio.task_finished(
            record.task_id,
            state="not_sent",
            error="looked up after the lost create: no such task exists, nothing was created",
        )
        return Reconciled.ABSENT, None, "no such task exists: nothing was created or billed"
    await ledger.aio.task_accepted(
        record.task_id,
        provider_task_id=found.task_id,
        poll_ref=found.poll_ref,
        replayed=found.replayed,
        billed_usd=found.billed_usd,
    )
    log.info("reconciled %s: %s task %s exists", record.task_id, provider.name, found.task_id)
    return Reconciled.FOUND, found, f"found: {provider.name} task {found.task_id}"


def due(deps: RouteDeps, provider: str) -> bool:
    """Whether a request to `provider` should look its unknown tasks up first (rate limit)."""
    last = deps.recovery.checked_at.get(provider)
    now = deps.clock()
    if last is not None and now - last < RECHECK_S:
        return False
    deps.recovery.checked_at[provider] = now
    return True


def pending(ledger: Ledger, provider: str) -> list[UnknownTask]:
    """This backend's unknown tasks that no live process is still creating."""
    return [
        task
        for task in ledger.unknown_tasks(provider=provider, limit=PER_REQUEST * 4)
        if not owner_alive(task.request_status, task.owner_pid, task.owner)
    ][:PER_REQUEST]

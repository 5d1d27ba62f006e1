"""Collect paid jobs whose images never reached disk (a crash, a kill, a timeout, a full
disk), settle what possibly-billed creates turned out to be, and close what a dead process
left open.

The ledger knows every accepted task and how to poll it (`poll_ref`), and every create whose
answer was lost (`unknown`, with the create as sent). One pass of `resume`:
1. looks each unknown task up by the provider's own means (reconcile.py): found ones become
   accepted and are collected below; absent ones are closed as never created;
2. polls each accepted task with images missing: a finished one's images are downloaded
   (into `output_dir` when given), a running one is left for later, a failed one is closed;
3. closes requests whose process died (`interrupted`) and settles or releases every open
   reservation of theirs from what their tasks cost.
Tasks of a request a live process still runs are left to it. One task's failure (a full
disk, a provider error) is reported for that task and never stops the others.
`sweep` runs passes periodically for the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .clock import Sleep, system_sleep
from .collect import ImageSink, save_image
from .errors import ImageRouterError, ProviderError
from .geometry import parse_size
from .reconcile import PER_REQUEST, Reconciled, due, owner_alive, pending, reconcile_unknown
from .route_deps import as_deps

if TYPE_CHECKING:
    from .ledger import Ledger, UncollectedTask, UnknownTask
    from .route_deps import HasDeps, RouteDeps

__all__ = [
    "SWEEP_INTERVAL_S",
    "ResumeOutcome",
    "reconcile_backend",
    "resume_uncollected",
    "sweep",
]

log = logging.getLogger("imagerouter.resume")

SWEEP_INTERVAL_S = 60.0  # the gateway's sweeper: seconds between passes


@dataclass(frozen=True)
class ResumeOutcome:
    task_id: str
    provider: str
    state: str  # collected | running | failed | error | unknown | not_sent
    images: tuple[str, ...] = ()
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "task_id": self.task_id,
            "provider": self.provider,
            "state": self.state,
            "images": list(self.images),
            "detail": self.detail,
        }


async def resume_uncollected(
    source: RouteDeps | HasDeps, *, output_dir: Path | None = None
) -> list[ResumeOutcome]:
    """One resume pass (see the module docstring). `source`: the Router's deps, or a
    Router. `output_dir` collects into another directory than each request's own (a full
    disk, a moved folder)."""
    deps = as_deps(source)
    ledger = deps.ledger
    if ledger is None:
        raise ImageRouterError("resume needs the ledger (ledger.enabled: true)")
    outcomes: list[ResumeOutcome] = []
    touched: set[str] = set()
    for unknown in await ledger.aio.unknown_tasks():
        if owner_alive(unknown.request_status, unknown.owner_pid, unknown.owner):
            continue
        outcome = await _guarded(
            deps, unknown.task_id, unknown.provider, partial(_reconcile_one, deps, unknown)
        )
        if outcome is not None:
            if outcome.state != "unknown":
                touched.add(unknown.request_id)
            if outcome.state != "accepted":  # accepted ones are collected below
                outcomes.append(outcome)
    for task in await _collectable(ledger):
        outcome = await _guarded(
            deps, task.task_id, task.provider, partial(_resume_one, deps, task, output_dir)
        )
        if outcome is not None:
            outcomes.append(outcome)
            touched.add(task.request_id)
    await _close_requests(ledger, touched)
    return outcomes


async def reconcile_backend(deps: RouteDeps, provider: str) -> list[ResumeOutcome]:
    """Before a request is sent to `provider`: look up to `PER_REQUEST` of its unknown
    tasks (at most every `RECHECK_S` seconds), and collect those found finished. Cheap when
    there are none (one indexed query), and never raises."""
    ledger = deps.ledger
    if ledger is None or not due(deps, provider):
        return []
    try:
        records = await ledger.aio.call(pending, ledger, provider)
        outcomes = []
        for record in records[:PER_REQUEST]:
            outcome = await _guarded(
                deps, record.task_id, provider, partial(_reconcile_one, deps, record)
            )
            if outcome is None or outcome.state == "unknown":
                continue
            if outcome.state == "accepted":
                for task in await ledger.aio.uncollected():
                    if task.task_id == record.task_id:
                        outcome = await _guarded(
                            deps, task.task_id, provider, partial(_resume_one, deps, task, None)
                        )
                        break
            if outcome is not None:
                outcomes.append(outcome)
            await ledger.aio.settle_reservations(record.request_id, resettle=True)
        return outcomes
    except Exception:  # recovery must never break the request that triggered it
        log.warning("reconciling %s's unknown tasks failed", provider, exc_info=True)
        return []


async def sweep(
    deps_of: Callable[[], RouteDeps | HasDeps],
    *,
    interval: float | None = None,
    sleep: Sleep | None = None,
    passes: int | None = None,
    first_delay: bool = False,
    lease: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Run a resume pass every `interval` seconds (default `SWEEP_INTERVAL_S`; the
    gateway's sweeper) until cancelled, or `passes` times. `deps_of` gives the deps (or a
    Router) when a pass runs: the gateway builds its Router lazily, and asking each pass
    picks up a rebuilt one. `sleep` defaults to the deps' own, so tests that inject one never
    wait on wall time. Without a ledger there is nothing to sweep; a failing pass is logged
    and the next one runs anyway. `first_delay`: wait one interval before the first pass.
    `lease`: a pass runs only when it returns True (one sweeper at a time in a fleet:
    stores/shared_lease.py)."""
    every = SWEEP_INTERVAL_S if interval is None else interval
    done = 0
    while passes is None or done < passes:
        deps = _built(deps_of)
        if done or first_delay:
            await (sleep or (deps.sleep if deps is not None else system_sleep))(every)
            deps = _built(deps_of) or deps  # the freshest: rebuilt while we slept?
        done += 1
        if deps is None or deps.ledger is None:
            continue
        if lease is not None and not await lease():
            continue  # another replica's sweeper holds the lease
        try:
            for outcome in await resume_uncollected(deps):
                log.info("sweeper: %s (%s): %s %s", outcome.task_id, outcome.provider,
                         outcome.state, outcome.detail)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("sweeper pass failed", exc_info=True)


def _built(deps_of: Callable[[], RouteDeps | HasDeps]) -> RouteDeps | None:
    try:
        return as_deps(deps_of())
    except Exception:
        log.warning("sweeper: no router", exc_info=True)
        return None


# -- one task ------------------------------------------------------------------------------


async def _guarded(
    deps: RouteDeps,
    task_id: str,
    provider: str,
    work: Callable[[], Awaitable[ResumeOutcome]],
) -> ResumeOutcome | None:
    """Run one task's recovery; None when another coroutine of this router is already on
    it. Any failure is that task's outcome, never the end of the pass."""
    busy = deps.recovery.busy
    if task_id in busy:
        return None
    busy.add(task_id)
    try:
        return await work()
    except asyncio.CancelledError:
        raise
    except ImageRouterError as exc:  # said in the outcome; one line in the log
        log.warning("resume of %s failed: %s", task_id, exc)
        return ResumeOutcome(task_id, provider, "error", detail=str(exc))
    except Exception as exc:  # a bug: the traceback goes to the log, the pass goes on
        log.warning("resume of %s failed", task_id, exc_info=True)
        return ResumeOutcome(task_id, provider, "error", detail=f"{type(exc).__name__}: {exc}")
    finally:
        busy.discard(task_id)


async def _reconcile_one(deps: RouteDeps, record: UnknownTask) -> ResumeOutcome:
    verdict, _, detail = await reconcile_unknown(deps, record)
    state = {
        Reconciled.FOUND: "accepted",
        Reconciled.ABSENT: "not_sent",
        Reconciled.UNKNOWN: "unknown",
    }[verdict]
    if verdict is Reconciled.UNKNOWN:
        detail = f"possibly billed, still being watched: {detail}"
    return ResumeOutcome(record.task_id, record.provider, state, detail=detail)


async def _collectable(ledger: Ledger) -> list[UncollectedTask]:
    tasks = await ledger.aio.uncollected()
    owners = await ledger.aio.request_owners([t.request_id for t in tasks])
    return [
        task for task in tasks
        if not owner_alive(*owners.get(task.request_id, ("failed", None)))
    ]


async def _resume_one(
    deps: RouteDeps, task: UncollectedTask, output_dir: Path | None
) -> ResumeOutcome:
    ledger = deps.ledger
    assert ledger is not None
    if task.provider not in deps.catalog.entries:
        return ResumeOutcome(task.task_id, task.provider, "error", detail="provider not installed")
    client = deps.client_for(task.provider)
    try:
        status = await client.get(task.poll_ref or task.provider_task_id)
    except ProviderError as exc:
        return ResumeOutcome(task.task_id, task.provider, "error", detail=str(exc))
    if not status.terminal:
        return ResumeOutcome(task.task_id, task.provider, "running", detail=status.state.value)
    if not status.state.produced_images:
        await ledger.aio.task_finished(
            task.task_id, state=status.state.value, error=status.error
        )
        return ResumeOutcome(task.task_id, task.provider, "failed", detail=status.error or "")
    sink = ImageSink(
        http=deps.http(),
        output_dir=output_dir or Path(task.output_dir),
        provider=task.provider,
        max_bytes=deps.config.downloads.max_bytes,
        max_pixels=deps.config.downloads.max_pixels,
        headers=client.auth_headers(),
        sleep=deps.sleep,
        hosts=deps.download_policy(task.provider),
    )
    saved = []
    for index, url in enumerate(status.image_urls):
        if index in task.saved_indexes:
            continue
        image = await save_image(
            sink,
            ledger,
            task_id=task.task_id,
            index=index,
            url=url,
            stem=f"{task.task_id}-r{index + 1}",
            convert_to=task.output_format,
            resize_to=_resize_to(task, deps.config.routing.size_policy),
            url_expires_at=status.urls_expire_at,
            provider_task_id=task.provider_task_id,
        )
        saved.append(str(image.path))
    await ledger.aio.task_finished(
        task.task_id,
        state="collected",
        billed_usd=status.billed_usd,
        image_urls=status.image_urls,
        urls_expire_at=status.urls_expire_at,
    )
    log.info("resumed %s: saved %d image(s)", task.task_id, len(saved))
    return ResumeOutcome(task.task_id, task.provider, "collected", images=tuple(saved))


# -- requests ------------------------------------------------------------------------------


async def _close_requests(ledger: Ledger, touched: Iterable[str]) -> None:
    """Close requests whose process died, and settle every reservation left open (or made
    stale by what this pass learned) from what the requests' tasks cost."""
    settle = set(touched)
    for request in await ledger.aio.open_requests():
        if owner_alive(request.status, request.owner_pid, request.owner):
            continue
        if request.status == "running":
            await ledger.aio.close_request(
                request.request_id,
                error="the process stopped before the request finished; `imagerouter resume` "
                "collects its paid tasks",
            )
            log.info("resume: closed %s (its process is gone)", request.request_id)
        settle.add(request.request_id)
    for request_id in sorted(settle):
        await ledger.aio.settle_reservations(request_id, resettle=True)


def _resize_to(task: UncollectedTask, default_policy: str) -> tuple[int, int] | None:
    """The WxH a resumed image is fitted to: the request's size under size policy `exact`."""
    if (task.size_policy or default_policy) != "exact" or task.requested_size in (None, "auto"):
        return None
    try:
        return parse_size(task.requested_size or "")
    except ValueError:
        return None

"""One logical request, routed: pick an offer, run it, fail over only when that is safe.

The loop, per attempt:
1. re-quote for the images still missing and order the offers by rank and health;
2. reserve the attempt's quoted cost (refused before any paid call if it does not fit);
3. run the offer (execution.py) and keep every image it delivered;
4. settle the reservation with what was (or may have been) billed, record health, ledger and
   events, then classify each failure (failures.py) and either stop or move on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from .accounting import record_attempt
from .budget import current_key_name, current_mcp_client
from .errors import (
    BackendsUnavailableError,
    InputImageError,
    NoEligibleOfferError,
    ProviderError,
)
from .events import ResultEvent
from .execution import OfferOutcome, Progress, RunContext, run_offer
from .failures import classify, refusal_may_differ
from .result import AttemptRecord, GenerationResult, SavedImage
from .resume import reconcile_backend

if TYPE_CHECKING:
    from .ledger import PaidTask
    from .offers import Offer
    from .provider import LoadedImage
    from .request import ImageRequest
    from .route_deps import RouteDeps

__all__ = ["Interruption", "route_request"]


@dataclass(frozen=True)
class Interruption:
    """A request stopped before it finished (Ctrl-C, a cancelled job). It is recorded
    `interrupted` with `cost_usd`, the cost of its accepted tasks; `paid_tasks` are those
    still out at the provider (and creates left unknown), which `imagerouter resume`
    collects. The CLI prints `message()`."""

    request_id: str
    cost_usd: Decimal
    paid_tasks: tuple[PaidTask, ...] = ()
    recorded: bool = True  # False: no ledger, so what was paid is not known here

    def message(self) -> str:
        lines = [f"interrupted: request {self.request_id} stopped before it finished"]
        running = [t for t in self.paid_tasks if t.provider_task_id]
        unknown = [t for t in self.paid_tasks if not t.provider_task_id]
        if running:
            lines.append(
                f"{len(running)} paid task(s) are still running at the provider "
                f"(recorded as ${self.cost_usd:f}):"
            )
            lines += [
                f"  {t.provider} task {t.provider_task_id} (${t.quoted_usd:f})" for t in running
            ]
        if unknown:
            lines.append(
                f"{len(unknown)} create(s) were being sent and may be billed "
                f"({', '.join(f'{t.provider} client_ref {t.task_id}' for t in unknown)})"
            )
        if running or unknown:
            lines.append("`imagerouter resume` collects them (and looks up any unknown one)")
        elif not self.recorded:
            lines.append("the ledger is off: tasks it created may still run at the provider")
        else:
            lines.append("no provider had accepted a task for it: nothing was charged")
        return "\n".join(lines)

log = logging.getLogger("imagerouter.routing")


@dataclass
class _State:
    request_id: str
    request: ImageRequest
    output_dir: Path
    remaining: int
    images: list[SavedImage] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)
    quoted: Decimal = Decimal(0)
    billed: Decimal | None = None
    tried: dict[tuple[str, str, str], int] = field(default_factory=dict)
    served_by: Offer | None = None
    last_error: BaseException | None = None
    double_charge_accepted: bool = False


async def route_request(
    deps: RouteDeps,
    request: ImageRequest,
    inputs: Sequence[LoadedImage | str],
    mask: LoadedImage | str | None,
    output_dir: Path,
    progress: Callable[[Progress], None] | None = None,
    *,
    request_id: str | None = None,
) -> GenerationResult:
    # Given when an idempotency key claimed this id in the ledger before anything was sent.
    request_id = request_id or new_request_id()
    state = _State(request_id, request, output_dir, remaining=request.n)
    started = deps.clock()
    offers = _eligible(deps, request, inputs, mask)
    if deps.ledger is not None:
        await deps.ledger.aio.begin_request(
            request_id,
            operation=request.operation,
            model=request.model,
            tier=request.tier or deps.config.default_tier,
            prompt=request.prompt,
            request=request.public_dict(),
            output_dir=str(output_dir),
            quoted_usd=offers[0].total_usd,
            key_name=current_key_name(),  # the gateway key's name (budget_scopes), or None
            mcp_client=current_mcp_client(),  # `imagerouter mcp`'s caller, or None
        )
    try:
        while state.remaining > 0:
            if len(state.attempts) >= deps.config.routing.max_attempts:
                raise _final_error(state, "routing.max_attempts reached")
            offer = _next_offer(deps, state, inputs, mask)
            if offer is None:
                raise _final_error(state, "no healthy backend is left to try")
            # Possibly-billed creates of this backend's earlier requests are looked up first
            # (bounded, rate-limited, never raises).
            await reconcile_backend(deps, offer.provider)
            await _wait_if_cooling_down(deps, state, offer)
            outcome = await _attempt(deps, state, offer, inputs, mask, progress)
            if outcome.errors and not _may_continue(deps, state, offer, outcome):
                raise _final_error(state, "stopped to avoid paying twice")
    except asyncio.CancelledError as exc:
        # Cancelled (Ctrl-C, a client gone): record it without awaiting anything more.
        _interrupted(deps, state, started, exc)
        raise
    except BaseException as exc:
        await _finish_async(deps, state, started, exc)
        raise
    await _finish_async(deps, state, started, None)
    served = state.served_by
    assert served is not None
    return GenerationResult(
        request_id=request_id,
        provider=served.provider,
        model=served.model,
        operation=served.operation,
        images=tuple(state.images),
        cost_usd=state.quoted,
        billed_usd=state.billed,
        task_ids=tuple(state.task_ids),
        attempts=tuple(state.attempts),
        params=dict(served.params),
        tier=served.tier,
        notes=served.notes,
    )


def new_request_id() -> str:
    """Sortable and readable, and safe as a file name: ir-20261122-101500-1a2b3c4d."""
    return f"ir-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


def _eligible(
    deps: RouteDeps,
    request: ImageRequest,
    inputs: Sequence[LoadedImage | str],
    mask: LoadedImage | str | None,
) -> list[Offer]:
    offers = deps.quote_request(request)
    eligible = []
    too_big: InputImageError | None = None
    for offer in offers:
        if not offer.eligible:
            continue
        problem = _oversized_input(deps, offer, inputs, mask)
        if problem is None:
            eligible.append(offer)
        else:
            too_big = too_big or problem
    if not eligible:
        if too_big is not None:
            raise too_big
        raise NoEligibleOfferError("no backend can serve this request:", offers)
    return eligible


def _oversized_input(
    deps: RouteDeps,
    offer: Offer,
    inputs: Sequence[LoadedImage | str],
    mask: LoadedImage | str | None,
) -> InputImageError | None:
    """The error for the first input over this offer's provider's upload cap, if any."""
    entry = deps.catalog.entries.get(offer.provider)
    cap = entry.provider.upload_limit_bytes(deps.capabilities(offer.provider)) if entry else None
    if cap is None:
        return None
    for item in (*inputs, *([mask] if mask is not None else [])):
        if not isinstance(item, str) and item.size_bytes > cap:
            return InputImageError(
                item.name,
                f"is {item.size_bytes} bytes, over {offer.provider}'s upload cap of {cap} bytes",
            )
    return None


MAX_COOLDOWN_WAIT_S = 60.0
# With nothing accepted yet, a longer wait is not worth it: answer now, with when to retry
# (a gateway client gets a 503 with Retry-After). Long waits are for accepted jobs only.
FAST_FAIL_WAIT_S = 5.0


async def _wait_if_cooling_down(deps: RouteDeps, state: _State, offer: Offer) -> None:
    """When the only backend left is out for a while (a 429's Retry-After, or ejected after
    failures), wait for it rather than hammer it; with another healthy backend the router
    never gets here. A long wait before any task was accepted is a quick error instead."""
    wait = deps.health.retry_in(offer.backend)
    if wait is None or wait <= 0:
        return
    if wait > FAST_FAIL_WAIT_S and not state.task_ids:
        deps.health.release(offer.backend)
        last = "" if state.last_error is None else f" (last error: {state.last_error})"
        raise BackendsUnavailableError(
            f"no backend is available now; retry in {math.ceil(wait)} s{last}",
            retry_after_s=wait,
        )
    await deps.sleep(min(wait, MAX_COOLDOWN_WAIT_S))


def _next_offer(
    deps: RouteDeps,
    state: _State,
    inputs: Sequence[LoadedImage | str],
    mask: LoadedImage | str | None,
) -> Offer | None:
    request = state.request
    if state.remaining != request.n:
        request = request.with_overrides(n=state.remaining)
    try:
        candidates = _eligible(deps, request, inputs, mask)
    except NoEligibleOfferError:
        return None
    ordered_keys = deps.health.order([offer.backend for offer in candidates])
    rank_of = {key: index for index, key in enumerate(ordered_keys)}
    usable = [offer for offer in candidates if offer.backend in rank_of]
    # Untried backends first; among equals, the health order (which keeps the price rank).
    # Among backends this request already tried, the shorter failure streak first, so a
    # retry goes to the backend that is doing better, not back to the cheaper one that
    # keeps failing.
    def streak(offer: Offer) -> int:
        if not state.tried.get(offer.backend):
            return 0
        return deps.health.stats(offer.backend).consecutive_failures

    usable.sort(key=lambda o: (state.tried.get(o.backend, 0), streak(o), rank_of[o.backend]))
    for offer in usable:
        if deps.health.begin(offer.backend):
            return offer
    return None


async def _attempt(
    deps: RouteDeps,
    state: _State,
    offer: Offer,
    inputs: Sequence[LoadedImage | str],
    mask: LoadedImage | str | None,
    progress: Callable[[Progress], None] | None,
) -> OfferOutcome:
    attempt_no = len(state.attempts) + 1
    attempt_id = f"{state.request_id}-a{attempt_no}"
    state.tried[offer.backend] = state.tried.get(offer.backend, 0) + 1
    quoted = offer.total_usd or Decimal(0)
    try:
        reservation = (
            await deps.budget.ledger.aio.call(
                deps.budget.reserve, state.request_id, quoted, attempt_id=attempt_id
            )
            if deps.budget
            else None
        )
    except BaseException:
        deps.health.release(offer.backend)
        raise
    if deps.ledger is not None:
        await deps.ledger.aio.begin_attempt(
            attempt_id,
            request_id=state.request_id,
            attempt_no=attempt_no,
            provider=offer.provider,
            model=offer.model,
            operation=offer.operation,
            quoted_usd=quoted,
            params=dict(offer.params),
            accepts_double_charge=state.double_charge_accepted,
        )
    started = deps.clock()
    outcome = OfferOutcome()
    try:
        client = deps.client_for(offer.provider)
        ctx = RunContext(
            request_id=state.request_id,
            attempt_id=attempt_id,
            provider=deps.provider(offer.provider),
            client=client,
            settings=deps.config.provider_settings(offer.provider),
            ledger=deps.ledger,
            output_dir=state.output_dir,
            http=deps.http(),
            max_bytes=deps.config.downloads.max_bytes,
            max_pixels=deps.config.downloads.max_pixels,
            clock=deps.clock,
            sleep=deps.sleep,
            schedule=deps.schedule_for(offer),
            on_unknown=deps.config.routing.on_unknown_submission,
            on_deadline=deps.config.routing.on_deadline,
            image_offset=len(state.images),
            progress=progress,
            callback_url=deps.callback_url(offer.provider),
            waiters=deps.waiters,
            download_hosts=deps.download_policy(offer.provider),
        )
        outcome = await run_offer(ctx, offer, state.request.prompt, inputs, mask)
    except Exception as exc:  # failures before any task (key, upload): nothing was created
        outcome.errors.append(exc)
    elapsed = deps.clock() - started
    await record_attempt(
        deps, state, offer, outcome, reservation, elapsed, attempt_id, attempt_no
    )
    return outcome


def _may_continue(deps: RouteDeps, state: _State, offer: Offer, outcome: OfferOutcome) -> bool:
    routing = deps.config.routing
    for error in outcome.errors:
        verdict = classify(error)
        if verdict.failover:
            continue
        if verdict.accepted == "unknown" and routing.on_unknown_submission == "failover":
            # The user accepted a possible double charge in the config; record it.
            state.double_charge_accepted = True
            continue
        if type(error).__name__ == "JobTimedOutError" and routing.on_deadline == "hedge":
            state.double_charge_accepted = True
            continue
        if refusal_may_differ(error, same_provider=_only_same_provider(deps, state, offer)):
            continue
        return False
    return True


def _only_same_provider(deps: RouteDeps, state: _State, offer: Offer) -> bool:
    request = state.request
    try:
        others = [o for o in deps.quote_request(request) if o.eligible]
    except Exception:
        return True
    return all(o.provider == offer.provider for o in others)


def _final_error(state: _State, why: str) -> BaseException:
    if state.last_error is not None:
        error = state.last_error
        if state.images and isinstance(error, ProviderError):
            saved = ", ".join(str(image.path) for image in state.images)
            error.message = f"{error.message}; {len(state.images)} image(s) were saved: {saved}"
            error.args = (error._render(),)
        return error
    return NoEligibleOfferError(f"the request could not be served: {why}")


async def _finish_async(
    deps: RouteDeps, state: _State, started: float, error: BaseException | None
) -> None:
    # The ledger write goes to the ledger's writer thread; hooks stay on the event loop.
    elapsed = deps.clock() - started
    if deps.ledger is not None:
        await deps.ledger.aio.call(_end_request, deps, state, elapsed, error)
    _emit_result(deps, state, elapsed, error)


def _interrupted(deps: RouteDeps, state: _State, started: float, error: BaseException) -> None:
    """Record an interrupted request synchronously (the task is being cancelled): its
    creates in flight become unknown, it is `interrupted` with its accepted tasks' cost, and
    the open reservation is settled from its tasks. The report goes to
    `deps.recovery` (the Router's own: the CLI prints it)."""
    elapsed = deps.clock() - started
    paid: list[PaidTask] = []
    cost = state.quoted
    if deps.ledger is not None:
        try:
            paid = deps.ledger.interrupt_request(
                state.request_id, error="interrupted before it finished", elapsed_s=elapsed
            )
            deps.ledger.settle_reservations(state.request_id)
            row = deps.ledger.request_detail(state.request_id)["request"]
            cost = Decimal(row["cost_usd"] or 0)
        except Exception:  # the report must still reach the user
            log.warning("recording the interruption of %s failed", state.request_id,
                        exc_info=True)
    deps.recovery.interruptions.append(
        Interruption(state.request_id, cost, tuple(paid), recorded=deps.ledger is not None)
    )
    _emit_result(deps, state, elapsed, error)


def _end_request(
    deps: RouteDeps, state: _State, elapsed: float, error: BaseException | None
) -> None:
    served = state.served_by
    ok = error is None
    if deps.ledger is not None:
        deps.ledger.end_request(
            state.request_id,
            status="served" if ok else "failed",
            provider=served.provider if served else None,
            model=served.model if served else None,
            cost_usd=state.quoted,
            billed_usd=state.billed,
            error=None if ok else f"{type(error).__name__}: {error}",
            elapsed_s=elapsed,
        )


def _emit_result(
    deps: RouteDeps, state: _State, elapsed: float, error: BaseException | None
) -> None:
    served = state.served_by
    ok = error is None
    deps.emit(
        "on_result",
        event=ResultEvent(
            request_id=state.request_id,
            ok=ok,
            provider=served.provider if served else None,
            model=served.model if served else None,
            attempts=len(state.attempts),
            quoted_usd=state.quoted,
            billed_usd=state.billed,
            images=len(state.images),
            error_type=None if ok else type(error).__name__,
            error=None if ok else str(error),
            elapsed_s=elapsed,
        ),
    )

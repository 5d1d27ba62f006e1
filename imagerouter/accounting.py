"""After each attempt: settle its budget reservation, tell health what happened, write the
ledger, log one line and call the `on_attempt` hook. Kept apart from the routing loop so the
loop reads as decisions and this module as bookkeeping."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from .errors import DownloadFailedError, ProviderError
from .events import AttemptEvent
from .failures import Verdict, classify
from .health import FailureKind
from .result import AttemptRecord, SavedImage

if TYPE_CHECKING:
    from .budget import Reservation
    from .execution import OfferOutcome
    from .offers import Offer
    from .route_deps import RouteDeps

__all__ = ["AttemptState", "record_attempt"]

log = logging.getLogger("imagerouter.routing")


class AttemptState(Protocol):
    """What the routing loop keeps per logical request (routing._State)."""

    request_id: str
    remaining: int
    images: list[SavedImage]
    attempts: list[AttemptRecord]
    task_ids: list[str]
    quoted: Decimal
    billed: Decimal | None
    served_by: Offer | None
    last_error: BaseException | None


async def record_attempt(
    deps: RouteDeps,
    state: AttemptState,
    offer: Offer,
    outcome: OfferOutcome,
    reservation: Reservation | None,
    elapsed: float,
    attempt_id: str,
    attempt_no: int,
) -> None:
    per_image = offer.per_image_usd or Decimal(0)
    delivered = len(outcome.images)
    verdicts = [classify(error) for error in outcome.errors]
    possibly_billed = sum(
        count
        for error, verdict, count in _error_counts(deps, offer, outcome, verdicts)
        if verdict.possibly_billed or (isinstance(error, ProviderError) and _billed_anyway(error))
    )
    quoted_spend = per_image * (delivered + possibly_billed)
    spend = (
        quoted_spend
        if outcome.billed_usd is None
        else outcome.billed_usd + per_image * possibly_billed
    )
    if deps.budget is not None and reservation is not None:
        if spend > 0:
            await deps.budget.ledger.aio.call(deps.budget.settle, reservation, spend)
        else:
            await deps.budget.ledger.aio.call(deps.budget.release, reservation)
    state.images.extend(outcome.images)
    state.remaining -= delivered
    state.task_ids.extend(outcome.task_ids)
    state.quoted += quoted_spend
    if outcome.billed_usd is not None:
        state.billed = (state.billed or Decimal(0)) + outcome.billed_usd
    if delivered and state.served_by is None:
        state.served_by = offer
    # Health: a delivered task proves the backend works; otherwise the first error decides.
    if delivered:
        deps.health.record_success(offer.backend, outcome.latency_s)
    elif verdicts:
        verdict = verdicts[0]
        if verdict.health == FailureKind.REQUEST:
            deps.health.release(offer.backend)
        else:
            deps.health.record_failure(
                offer.backend, verdict.health, retry_after=verdict.retry_after
            )
    else:
        deps.health.release(offer.backend)
    first_error = outcome.errors[0] if outcome.errors else None
    accepted = verdicts[0].accepted if verdicts else "yes"
    if delivered and outcome.errors:
        accepted = "yes"
    outcome_name = (
        "served" if delivered and not outcome.errors else ("partial" if delivered else "failed")
    )
    record = AttemptRecord(
        provider=offer.provider,
        model=offer.model,
        outcome=outcome_name,
        accepted=accepted,
        error=str(first_error) if first_error else None,
        error_type=type(first_error).__name__ if first_error else None,
        task_ids=tuple(outcome.task_ids),
    )
    state.attempts.append(record)
    if first_error is not None:
        state.last_error = first_error
    if deps.ledger is not None:
        await deps.ledger.aio.end_attempt(
            attempt_id,
            outcome=outcome_name,
            accepted=accepted,
            error_type=record.error_type,
            error=record.error,
            billed_usd=outcome.billed_usd,
            elapsed_s=elapsed,
        )
    log.info(
        "attempt request=%s n=%d provider=%s model=%s outcome=%s accepted=%s images=%d "
        "elapsed=%.2fs error=%s",
        state.request_id,
        attempt_no,
        offer.provider,
        offer.model,
        outcome_name,
        accepted,
        delivered,
        elapsed,
        record.error_type,
    )
    deps.emit(
        "on_attempt",
        event=AttemptEvent(
            request_id=state.request_id,
            attempt=attempt_no,
            provider=offer.provider,
            model=offer.model,
            operation=offer.operation,
            outcome=outcome_name,
            accepted=accepted,
            error_type=record.error_type,
            error=record.error,
            task_ids=tuple(outcome.task_ids),
            quoted_usd=quoted_spend,
            billed_usd=outcome.billed_usd,
            elapsed_s=elapsed,
        ),
    )


def _error_counts(
    deps: RouteDeps, offer: Offer, outcome: OfferOutcome, verdicts: list[Verdict]
) -> list[tuple[BaseException, Verdict, int]]:
    # Errors carry no per-task size, so each failed task counts the images one task of this
    # offer makes at most, as its provider says (exact for one image a task, else a bound).
    entry = deps.catalog.entries.get(offer.provider)
    size = entry.provider.images_per_task(offer) if entry else max(offer.batches[:1] or [1])
    return [(error, verdict, size) for error, verdict in zip(outcome.errors, verdicts, strict=True)]


def _billed_anyway(error: ProviderError) -> bool:
    return isinstance(error, DownloadFailedError)

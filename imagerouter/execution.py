"""Run one offer: upload inputs, create its tasks, poll them, save their images.

This is where "never pay twice" is enforced for a single provider:
- a create whose outcome is unknown is retried only with the same idempotency key (RunAPI),
  or reconciled by looking the task up by our task id (Runflow); nothing else re-sends it;
- every task is in the ledger as `submitting` before its create is sent, and as `accepted`
  with the provider's id before it is polled, so a crash loses nothing;
- polling waits through transient errors until the deadline and never resubmits.
The router (router.py) decides what to do with the errors raised here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from .clock import Clock, Sleep
from .collect import ImageSink, record_saved, save_image
from .download import adopt_image
from .errors import (
    AuthenticationError,
    DownloadFailedError,
    InvalidRequestError,
    JobFailedError,
    JobTimedOutError,
    MalformedResponseError,
    ProviderError,
    ProviderUnavailableError,
    SubmissionUnknownError,
)
from .polling import PollSchedule
from .provider import Submission, TaskSpec, TaskStatus
from .reconcile import WATCH_NOTE, spec_of

if TYPE_CHECKING:
    from .ledger import Ledger
    from .offers import Offer
    from .provider import LoadedImage, Provider, ProviderClient, ProviderSettings
    from .result import SavedImage
    from .urls import HostPolicy

__all__ = ["OfferOutcome", "Progress", "RunContext", "run_offer"]

log = logging.getLogger("imagerouter.execution")

CREATE_REPLAYS = 3  # same-key replays of a create whose answer was lost
RECONCILE_LOOKUPS = 2  # lookups by task id before a lost create counts as "not created"
FATAL_POLL_ERRORS = 3  # consecutive 401/403/404 polls before the task is given up
# Consecutive unreadable polls before giving up: more than the above, since a proxy's odd
# error page now and then is common, yet a bounded number (a provider that only ever
# answers garbage would otherwise be polled until poll_deadline, 15 minutes by default).
MALFORMED_POLL_ERRORS = 10


@dataclass(frozen=True)
class Progress:
    """A progress note for live displays."""

    provider: str
    task: int
    tasks: int
    state: str
    elapsed_s: float
    # The create was answered from a same-key replay (the first answer was lost): one task.
    replayed: bool = False
    # A streamed partial image (encoded bytes) from a backend that streams; the gateway
    # passes it on as OpenAI's `*.partial_image` event.
    partial_image: bytes | None = field(default=None, repr=False)


@dataclass
class RunContext:
    """Everything one attempt needs. Built by the router per attempt."""

    request_id: str
    attempt_id: str
    provider: Provider
    client: ProviderClient
    settings: ProviderSettings
    ledger: Ledger | None
    output_dir: Path
    http: httpx.AsyncClient
    max_bytes: int
    max_pixels: int
    clock: Clock
    sleep: Sleep
    schedule: PollSchedule
    on_unknown: str = "reconcile"
    on_deadline: str = "fail"
    # Images the request already has: this attempt's are numbered from image_offset + 1.
    image_offset: int = 0
    progress: Callable[[Progress], None] | None = None
    # Provider callbacks (webhooks) go here when the user configured a public base URL;
    # a callback only wakes the poll loop early, it is never trusted on its own.
    callback_url: str | None = None
    waiters: dict[tuple[str, str], asyncio.Event] | None = None
    download_hosts: HostPolicy | None = None  # the provider's result-image hosts


@dataclass
class TaskOutcome:
    task_id: str
    provider_task_id: str
    images: list[SavedImage]
    billed_usd: Decimal | None
    latency_s: float


@dataclass
class OfferOutcome:
    """What an attempt produced. `errors` holds one exception per task that did not deliver."""

    images: list[SavedImage] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)
    billed_usd: Decimal | None = None
    errors: list[BaseException] = field(default_factory=list)
    latency_s: float | None = None


async def run_offer(
    ctx: RunContext,
    offer: Offer,
    prompt: str,
    inputs: Sequence[LoadedImage | str],
    mask: LoadedImage | str | None,
) -> OfferOutcome:
    """Run every task of `offer` concurrently; collect what each delivered."""
    input_urls = tuple([await _as_url(ctx, item) for item in inputs])
    mask_url = await _as_url(ctx, mask) if mask is not None else None
    offsets = [sum(offer.batches[:i]) for i in range(len(offer.batches))]
    results = await asyncio.gather(
        *[
            _run_task(ctx, offer, index, count, offsets[index], prompt, input_urls, mask_url)
            for index, count in enumerate(offer.batches)
        ],
        return_exceptions=True,
    )
    outcome = OfferOutcome()
    latencies = []
    delivered: list[tuple[str, int, SavedImage]] = []
    for result in results:
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancellation and the like
            outcome.errors.append(result)
            continue
        delivered.extend((result.task_id, pos, image) for pos, image in enumerate(result.images))
        outcome.task_ids.append(result.provider_task_id)
        latencies.append(result.latency_s)
        if result.billed_usd is not None:
            outcome.billed_usd = (outcome.billed_usd or Decimal(0)) + result.billed_usd
    outcome.images = await _number(ctx, delivered)
    if latencies:
        outcome.latency_s = max(latencies)
    return outcome


async def _number(
    ctx: RunContext, delivered: list[tuple[str, int, SavedImage]]
) -> list[SavedImage]:
    """Give the attempt's images the request's next numbers, 1..n in task order.

    Each task saved under provisional numbers (its place in the offer), so a task that
    failed leaves a gap; closing the gaps here keeps a request's files numbered 1..n however
    many attempts and failed tasks it took. Images are moved in ascending order and every
    target number is at most the source's, so a move never lands on a file not yet moved."""
    numbered = []
    for rank, (task_id, position, image) in enumerate(delivered):
        target = image.path.with_name(
            f"{ctx.request_id}-{ctx.image_offset + rank + 1}{image.path.suffix}"
        )
        if target != image.path:
            await asyncio.to_thread(os.replace, image.path, target)
            if ctx.ledger is not None:
                await ctx.ledger.aio.image_moved(task_id, index=position, path=str(target))
            image = dataclasses.replace(image, path=target)
        numbered.append(image)
    return numbered


async def _as_url(ctx: RunContext, item: LoadedImage | str) -> str:
    if isinstance(item, str):
        return item  # a URL input the user allowed to pass through
    return await ctx.client.upload(item)


async def _run_task(
    ctx: RunContext,
    offer: Offer,
    index: int,
    count: int,
    offset: int,
    prompt: str,
    input_urls: tuple[str, ...],
    mask_url: str | None,
) -> TaskOutcome:
    task_id = f"{ctx.request_id}-{ctx.image_offset + offset + 1}-{uuid.uuid4().hex[:8]}"
    task = TaskSpec(
        task_id=task_id,
        idempotency_key=f"imagerouter-{task_id}",
        prompt=prompt,
        model=offer.model,
        operation=offer.operation,
        num_images=count,
        params=offer.params,
        input_urls=input_urls,
        mask_url=mask_url,
        metadata={"imagerouter_request": ctx.request_id},
        callback_url=ctx.callback_url,
        scratch_dir=str(ctx.output_dir),
        on_partial=_partial_sink(ctx, index, len(offer.batches)),
    )
    per_image = offer.per_image_usd or Decimal(0)
    if ctx.ledger is not None:
        await ctx.ledger.aio.task_submitting(
            task_id,
            attempt_id=ctx.attempt_id,
            request_id=ctx.request_id,
            provider=offer.provider,
            model=offer.model,
            operation=offer.operation,
            idempotency_key=task.idempotency_key,
            num_images=count,
            quoted_usd=per_image * count,
            spec=spec_of(task, first_image=ctx.image_offset + offset + 1),
        )
    started = ctx.clock()
    try:
        submission = await _create(ctx, offer, task)
    except ProviderError as exc:
        if exc.accepted == "unknown" and ctx.ledger is not None:
            # Possibly billed: say that it is not forgotten.
            exc.message = f"{exc.message}; {WATCH_NOTE}"
            exc.args = (exc._render(),)
        if ctx.ledger is not None:
            state = "unknown" if exc.accepted == "unknown" else "not_sent"
            await ctx.ledger.aio.task_finished(
                task_id,
                state=state,
                error=str(exc),
                possibly_billed=exc.accepted == "unknown",
            )
        raise
    if ctx.ledger is not None:
        await ctx.ledger.aio.task_accepted(
            task_id,
            provider_task_id=submission.task_id,
            poll_ref=submission.poll_ref,
            replayed=submission.replayed,
            billed_usd=submission.billed_usd,
        )
    _note(ctx, index, len(offer.batches), submission.state.value, started, submission.replayed)
    try:
        if submission.status is not None and submission.status.terminal:
            # A synchronous provider: the create's answer is the job's end (nothing to poll).
            status = _finished(ctx, submission, submission.status, task)
        else:
            status = await _poll(ctx, offer, submission, task, index, started)
    except JobFailedError as exc:
        if ctx.ledger is not None:
            await ctx.ledger.aio.task_finished(task_id, state="failed", error=str(exc))
        raise
    except JobTimedOutError as exc:
        # Still running at the provider: it may finish and be billed; `resume` collects it.
        if ctx.ledger is not None:
            await ctx.ledger.aio.task_finished(
                task_id,
                state="timed_out",
                error=str(exc),
                possibly_billed=True,
            )
        raise
    latency = ctx.clock() - started
    if ctx.ledger is not None:
        # Done at the provider: record when, and where the images are, before downloading,
        # so a crash during the download leaves `resume` everything it needs.
        await ctx.ledger.aio.task_finished(
            task_id,
            state=status.state.value,
            billed_usd=status.billed_usd,
            image_urls=status.image_urls,
            urls_expire_at=status.urls_expire_at,
        )
    images = await _collect(ctx, offer, task_id, submission.task_id, status, offset)
    if ctx.ledger is not None:
        await ctx.ledger.aio.task_finished(task_id, state="collected")
    billed = status.billed_usd if status.billed_usd is not None else submission.billed_usd
    return TaskOutcome(task_id, submission.task_id, images, billed, latency)


def _finished(
    ctx: RunContext, submission: Submission, status: TaskStatus, task: TaskSpec
) -> TaskStatus:
    if status.state.produced_images:
        return status
    raise JobFailedError(
        status.error or f"the task ended {status.state.value}",
        provider=ctx.provider.name,
        code=status.error_code,
        task_id=submission.task_id,
        client_ref=task.task_id,
    )


def _partial_sink(ctx: RunContext, index: int, tasks: int) -> Callable[[bytes], None] | None:
    """Hand a streamed partial image to the progress display (and the gateway)."""
    progress = ctx.progress
    if progress is None:
        return None
    started = ctx.clock()

    def sink(image: bytes) -> None:
        elapsed = ctx.clock() - started
        progress(
            Progress(ctx.provider.name, index, tasks, "running", elapsed, partial_image=image)
        )

    return sink


def _lost_answer(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.accepted == "unknown"


async def _create(ctx: RunContext, offer: Offer, task: TaskSpec) -> Submission:
    """Create a task once; after a lost answer, replay with the same key or reconcile.

    Both are free and can never make a second job, so they run under `reconcile` and
    `failover` alike; only `fail` stops at the first lost answer."""
    provider = ctx.provider
    if ctx.on_unknown == "fail":
        return await ctx.client.submit(offer, task)
    if provider.idempotent_creates:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(1 + CREATE_REPLAYS),
            wait=wait_exponential(multiplier=0.5, max=4),
            retry=retry_if_exception(_lost_answer),
            sleep=ctx.sleep,
            reraise=True,
        )
        lost: ProviderError | None = None
        async for attempt in retrying:
            with attempt:
                try:
                    return await ctx.client.submit(offer, task)
                except ProviderError as exc:
                    if exc.accepted == "unknown":
                        lost = exc
                    elif lost is not None:
                        # An earlier send may have created the task; a refused replay does
                        # not prove otherwise, so it stays unknown (never fail over on it).
                        raise SubmissionUnknownError(
                            f"a replay was refused ({exc.message}) after an earlier send got "
                            "no answer, so the task may exist and may be billed",
                            provider=provider.name,
                            status_code=exc.status_code,
                            client_ref=task.task_id,
                        ) from exc
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
    try:
        return await ctx.client.submit(offer, task)
    except ProviderError as exc:
        if exc.accepted != "unknown" or not provider.can_find_by_task_id:
            raise
        return await _reconcile(ctx, task, exc)


async def _reconcile(ctx: RunContext, task: TaskSpec, lost: ProviderError) -> Submission:
    """Settle a lost create by looking the task up by our task id (Runflow `client_ref`)."""
    for lookup in range(RECONCILE_LOOKUPS):
        await ctx.sleep(1.0 + lookup)
        try:
            found = await ctx.client.find(task)
        except (ProviderError, NotImplementedError) as exc:
            raise SubmissionUnknownError(
                "submission outcome unknown, possibly billed: the create got no answer and "
                f"looking the task up failed ({exc})",
                provider=ctx.provider.name,
                client_ref=task.task_id,
            ) from lost
        if found is not None:
            log.info("reconciled %s: found task %s", task.task_id, found.task_id)
            return found
    # Looked up twice and not there: the create never reached the provider.
    raise ProviderUnavailableError(
        f"the create got no answer ({lost.message}) and no task with this client_ref exists, "
        "so nothing was created",
        provider=ctx.provider.name,
        accepted="no",
        client_ref=task.task_id,
    ) from lost


async def _poll(
    ctx: RunContext,
    offer: Offer,
    submission: Submission,
    task: TaskSpec,
    index: int,
    started: float,
) -> TaskStatus:
    """Poll until the task ends. Transient errors are waited through; nothing is resent."""
    deadline = started + ctx.settings.poll_deadline
    fatal_streak = 0
    polls = 0
    state = submission.state
    key = (ctx.provider.name, submission.task_id)
    nudge = asyncio.Event() if ctx.waiters is not None else None
    if ctx.waiters is not None and nudge is not None:
        ctx.waiters[key] = nudge
    error_streak = 0
    try:
        while True:
            delay = ctx.schedule.delay(polls, ctx.clock() - started)
            # Back off while polls fail (x2, x4, x8), so a struggling provider is not hammered.
            await _wait(ctx, delay * 2 ** min(error_streak, 3), nudge)
            polls += 1
            status, fatal_streak = await _poll_once(ctx, submission, fatal_streak)
            error_streak = 0 if status is not None else error_streak + 1
            if status is not None:
                state = status.state
                _note(ctx, index, len(offer.batches), state.value, started)
                if status.state.produced_images:
                    return status
                if status.terminal:
                    raise JobFailedError(
                        status.error or f"the task ended {status.state.value}",
                        provider=ctx.provider.name,
                        code=status.error_code,
                        task_id=submission.task_id,
                        client_ref=task.task_id,
                    )
            if ctx.clock() >= deadline and ctx.on_deadline != "wait":
                raise JobTimedOutError(
                    f"still {state.value} after {ctx.settings.poll_deadline:g} s "
                    "(providers.<name>.poll_deadline); it may still finish and be billed: "
                    "`imagerouter resume` will collect it",
                    provider=ctx.provider.name,
                    task_id=submission.task_id,
                    client_ref=task.task_id,
                )
    finally:
        if ctx.waiters is not None:
            ctx.waiters.pop(key, None)


async def _wait(ctx: RunContext, delay: float, nudge: asyncio.Event | None) -> None:
    """Sleep until the next poll, or until a provider callback nudges us."""
    if nudge is None:
        await ctx.sleep(delay)
        return
    if nudge.is_set():
        nudge.clear()
        return
    sleeper = asyncio.ensure_future(ctx.sleep(delay))
    waker = asyncio.ensure_future(nudge.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()
    nudge.clear()


async def _poll_once(
    ctx: RunContext, submission: Submission, fatal_streak: int
) -> tuple[TaskStatus | None, int]:
    """One GET. Transient errors give (None, 0); auth/not-found ones and unreadable answers
    count toward giving up."""
    try:
        return await ctx.client.get(submission.poll_ref), 0
    except (AuthenticationError, InvalidRequestError, MalformedResponseError) as exc:
        # An unreadable 200 does not get better by waiting (a provider bug, a proxy's error
        # page); waiting it out would last until poll_deadline (15 minutes by default). The
        # task stays accepted in the ledger, so `resume` can collect it once answers are sane.
        malformed = isinstance(exc, MalformedResponseError)
        limit = MALFORMED_POLL_ERRORS if malformed else FATAL_POLL_ERRORS
        if fatal_streak + 1 >= limit:
            # The same exception, annotated: `from exc` would make it its own cause, a
            # cycle that anything walking the chain (loggers, reporters) never leaves.
            _with_task(exc, submission)
            raise
        return None, fatal_streak + 1
    except ProviderError as exc:
        log.info("poll of %s failed, will retry: %s", submission.task_id, exc)
        return None, 0


def _with_task(exc: ProviderError, submission: Submission) -> ProviderError:
    exc.task_id = exc.task_id or submission.task_id
    exc.accepted = "yes"
    return exc


async def _collect(
    ctx: RunContext,
    offer: Offer,
    task_id: str,
    provider_task_id: str,
    status: TaskStatus,
    offset: int,
) -> list[SavedImage]:
    if status.image_files:
        return await _adopt(ctx, offer, task_id, provider_task_id, status, offset)
    if not status.image_urls:
        raise DownloadFailedError(
            "the task succeeded but returned no image URL",
            provider=ctx.provider.name,
            task_id=task_id,
        )
    sink = ImageSink(
        http=ctx.http,
        output_dir=ctx.output_dir,
        provider=ctx.provider.name,
        max_bytes=ctx.max_bytes,
        max_pixels=ctx.max_pixels,
        headers=ctx.client.auth_headers(),
        sleep=ctx.sleep,
        hosts=ctx.download_hosts,
    )
    saved = []
    for position, url in enumerate(status.image_urls):
        number = ctx.image_offset + offset + position + 1
        image = await save_image(
            sink,
            ctx.ledger,
            task_id=task_id,
            index=position,
            url=url,
            stem=f"{ctx.request_id}-{number}",
            convert_to=offer.convert_to,
            resize_to=offer.resize_to,
            url_expires_at=status.urls_expire_at,
            provider_task_id=provider_task_id,
        )
        saved.append(image)
    return saved


async def _adopt(
    ctx: RunContext,
    offer: Offer,
    task_id: str,
    provider_task_id: str,
    status: TaskStatus,
    offset: int,
) -> list[SavedImage]:
    """Check and move into place the images a synchronous provider's client already wrote
    to disk from its answer. They exist nowhere else, so a failure says they are lost."""
    saved: list[SavedImage] = []
    files = list(status.image_files)
    try:
        for position, temp in enumerate(files):
            number = ctx.image_offset + offset + position + 1
            source = f"{ctx.provider.name}:{provider_task_id}/{position + 1}"
            try:
                image = await adopt_image(
                    temp,
                    ctx.output_dir,
                    f"{ctx.request_id}-{number}",
                    provider=ctx.provider.name,
                    source=source,
                    max_bytes=ctx.max_bytes,
                    max_pixels=ctx.max_pixels,
                    convert_to=offer.convert_to,
                    resize_to=offer.resize_to,
                )
            except DownloadFailedError as exc:
                reason, _, _ = exc.message.partition(". It is still at ")
                exc.message = (
                    f"{reason}; the job was paid for and {ctx.provider.name} keeps no copy "
                    "of its answer, so this image is lost"
                )
                exc.task_id = exc.task_id or provider_task_id
                exc.args = (exc._render(),)
                raise
            if ctx.ledger is not None:
                await record_saved(ctx.ledger, task_id, position, image, source_url=source)
            saved.append(image)
    finally:
        for temp in files[len(saved) :]:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    return saved


def _note(
    ctx: RunContext, index: int, tasks: int, state: str, started: float, replayed: bool = False
) -> None:
    if ctx.progress is not None:
        elapsed = ctx.clock() - started
        ctx.progress(Progress(ctx.provider.name, index, tasks, state, elapsed, replayed))

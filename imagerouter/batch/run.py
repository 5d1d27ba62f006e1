"""Running a batch: lines in parallel, each idempotent, under a hard cost cap.

Every keyed line goes through the router's idempotency (imagerouter/idempotency.py), so a
batch killed and started again never pays twice for a line:
- a line that succeeded before gets its stored result back (no call);
- a line that was paid for but not saved (the process died while it ran) is collected: one
  resume pass (imagerouter/resume.py) runs before the first line, and such a line waits, with
  more passes, until its accepted jobs finish and their images are on disk;
- a line whose earlier claim was given back (nothing was sent) simply runs.

`max_cost_usd` is a hard cap for the whole batch. Like a budget (imagerouter/budget.py), each
line reserves its planned cost before it runs and settles to what it really cost afterwards;
a line that does not fit waits for running lines to settle, and is skipped when nothing else
is running. Under the cap a line may fail over only to backends no dearer than its plan, so
what concurrent lines can spend never overshoots. What earlier runs of the batch spent counts
against the cap from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import reconcile
from ..errors import IdempotentRequestFailedError, ImageRouterError, RequestValidationError
from ..idempotency import Claim, IdempotencyKey, IdempotencyStore, KeyRecord, KeyState
from ..ledger import _task_cost
from ..pricing import quantize
from .parse import BatchLine, parse_requests
from .plan import BatchPlan, PlannedLine, plan_batch

if TYPE_CHECKING:
    from ..ledger import Ledger
    from ..result import GenerationResult
    from ..router import Router

__all__ = ["BatchOutcome", "BatchProgress", "CostCap", "run_plan", "run_plan_sync", "run_requests"]

COLLECT_WAIT_S = 900.0  # how long a paid-but-unsaved line waits for its jobs to finish
COLLECT_INTERVAL_S = 1.0  # between resume passes while it waits
LOST_MARGIN_S = 15.0  # past reconcile.ABSENT_AFTER_S, how long a lost create is waited for
_IN_FLIGHT = ("submitting", "accepted", "unknown", "timed_out")


@dataclass(frozen=True)
class BatchOutcome:
    """One line's outcome; `to_dict()` is its report line."""

    id: str
    line: int
    status: str  # succeeded | cached | collected | failed | skipped
    provider: str | None = None
    model: str | None = None
    cost_usd: Decimal = Decimal(0)
    paths: tuple[str, ...] = ()
    error: str | None = None
    request_id: str | None = None
    result: GenerationResult | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "cached", "collected")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "line": self.line,
            "status": self.status,
            "provider": self.provider,
            "model": self.model,
            "cost_usd": str(quantize(self.cost_usd)),
            "paths": list(self.paths),
            "error": self.error,
            "request_id": self.request_id,
        }


@dataclass
class BatchProgress:
    """Counts for a progress display, updated as lines start and finish."""

    total: int
    planned_usd: Decimal
    done: int = 0
    failed: int = 0
    running: int = 0
    spent_usd: Decimal = Decimal(0)


class CostCap:
    """A batch-wide hard cap: reservations held in this process (one event loop), checked
    and taken with no await in between, so concurrent lines cannot together pass it."""

    def __init__(self, limit: Decimal | None, spent: Decimal = Decimal(0)) -> None:
        self.limit = limit
        self.spent = spent
        self.reserved = Decimal(0)
        self._changed = asyncio.Event()

    @property
    def remaining(self) -> Decimal | None:
        if self.limit is None:
            return None
        return self.limit - self.spent - self.reserved

    async def reserve(self, amount: Decimal, *, others_running: Callable[[], bool]) -> bool:
        """Hold `amount`, waiting while running lines may still give some back; False when
        it cannot fit."""
        while True:
            remaining = self.remaining
            if remaining is None or amount <= remaining:
                self.reserved += amount
                return True
            if not others_running():
                return False
            self._changed.clear()
            await self._changed.wait()

    def settle(self, reserved: Decimal, actual: Decimal) -> None:
        self.reserved -= reserved
        self.spent += actual
        self._changed.set()

    def wake(self) -> None:
        """Something else changed (a line stopped running): waiters look again."""
        self._changed.set()


def run_requests(
    router: Router,
    requests: Iterable[Mapping[str, Any] | BatchLine],
    *,
    concurrency: int = 4,
    output_dir: str | Path | None = None,
    max_cost_usd: Decimal | str | float | None = None,
    source: str | None = None,
    cache: bool | None = None,
    on_progress: Callable[[BatchProgress], None] | None = None,
) -> AsyncIterator[BatchOutcome]:
    """Check, plan and run `requests`; yield each line's outcome as it finishes. Bad lines
    raise BatchFileError before anything is sent. `source` (a stable name, e.g. the batch
    file's absolute path) makes every line idempotent across runs."""
    lines = parse_requests(requests, source=source)
    plan = plan_batch(router, lines, source=source or "")
    return run_plan(
        router,
        plan,
        concurrency=concurrency,
        output_dir=output_dir,
        max_cost_usd=max_cost_usd,
        cache=cache,
        on_progress=on_progress,
    )


async def run_plan(
    router: Router,
    plan: BatchPlan,
    *,
    concurrency: int = 4,
    output_dir: str | Path | None = None,
    max_cost_usd: Decimal | str | float | None = None,
    cache: bool | None = None,
    on_progress: Callable[[BatchProgress], None] | None = None,
) -> AsyncIterator[BatchOutcome]:
    """Run a checked plan (see `run_requests`)."""
    if concurrency < 1:
        raise RequestValidationError("concurrency", "must be at least 1")
    limit = _money(max_cost_usd)
    out_dir = Path(output_dir) if output_dir is not None else Path(router.config.output.dir)
    keyed = router.ledger is not None and any(p.line.key for p in plan.lines)
    runner = _Runner(router, out_dir, cache)
    if keyed:
        # Jobs a killed run left accepted but unsaved are collected before anything new.
        await runner.resume_pass()
    known = await asyncio.to_thread(runner.known_records, plan.lines)
    spent_before = await asyncio.to_thread(
        lambda: sum((runner.record_cost(record) for record in known.values()), Decimal(0))
    )
    cap = CostCap(limit, spent_before)
    progress = BatchProgress(total=len(plan.lines), planned_usd=plan.total_usd)
    runner.cap, runner.progress, runner.on_progress = cap, progress, on_progress
    todo: asyncio.Queue[PlannedLine] = asyncio.Queue()
    for planned in plan.lines:
        todo.put_nowait(planned)
    done: asyncio.Queue[BatchOutcome] = asyncio.Queue()

    async def worker() -> None:
        while True:
            try:
                planned = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                outcome = await runner.line(planned, known.get(planned.line.id))
            except Exception as exc:  # a bug or a full disk: this line fails, others go on
                outcome = BatchOutcome(
                    planned.line.id,
                    planned.line.number,
                    "failed",
                    error=f"unexpected {type(exc).__name__}: {exc}",
                )
            done.put_nowait(outcome)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(plan.lines)))]
    try:
        for _ in plan.lines:
            outcome = await done.get()
            yield outcome
    finally:
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def run_plan_sync(
    router: Router,
    plan: BatchPlan,
    *,
    on_outcome: Callable[[BatchOutcome], None] | None = None,
    **options: Any,
) -> list[BatchOutcome]:
    """`run_plan` from sync code, on the Router's portal (its one background loop), calling
    `on_outcome` (on that loop's thread) as each line finishes."""

    async def collect() -> list[BatchOutcome]:
        outcomes: list[BatchOutcome] = []
        async for outcome in run_plan(router, plan, **options):
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        return outcomes

    return router._sync(collect, "abatch")


class _Runner:
    def __init__(self, router: Router, output_dir: Path, cache: bool | None) -> None:
        self.router = router
        self.output_dir = output_dir
        self.cache = cache
        self.cap = CostCap(None)
        self.progress = BatchProgress(0, Decimal(0))
        self.on_progress: Callable[[BatchProgress], None] | None = None
        self._resume_lock = asyncio.Lock()
        ledger = router.ledger
        self.store = IdempotencyStore(ledger) if ledger is not None else None

    # -- what earlier runs left ------------------------------------------------------------

    async def resume_pass(self) -> None:
        async with self._resume_lock:
            await self.router.aresume()

    def known_records(self, lines: Sequence[PlannedLine]) -> dict[str, KeyRecord]:
        """The idempotency rows earlier runs left for these lines, by line id."""
        if self.store is None:
            return {}
        found: dict[str, KeyRecord] = {}
        for planned in lines:
            if planned.line.key is None:
                continue
            record = self.store.lookup(IdempotencyKey.of(planned.line.key))
            if record is not None:
                found[planned.line.id] = record
        return found

    def record_cost(self, record: KeyRecord) -> Decimal:
        if record.state is KeyState.SUCCEEDED and record.result is not None:
            return record.result.cost_usd
        assert self.router.ledger is not None
        return _saved(self.router.ledger, record.request_id).cost

    # -- one line --------------------------------------------------------------------------

    async def line(self, planned: PlannedLine, record: KeyRecord | None) -> BatchOutcome:
        line = planned.line
        if record is not None and self._orphan(record) and line.key is not None:
            # A claim whose process died: given back when nothing was paid (then the line
            # runs), else kept as failed (then what was paid is collected).
            assert self.store is not None
            key = IdempotencyKey.of(line.key)
            await asyncio.to_thread(self.store.abandon, key, record)
            record = await asyncio.to_thread(self.store.lookup, key)
        if record is not None and record.state is KeyState.SUCCEEDED and record.result:
            return self._finished(_from_result(line, record.result))
        if record is not None and record.state is KeyState.FAILED:
            collected = await self._collect(line, record.request_id)
            if collected is not None:
                return self._finished(collected)
            # Nothing was paid after all (the create was proven never made): run it.
        amount = planned.cost_usd
        fits = await self.cap.reserve(amount, others_running=lambda: self.progress.running > 0)
        if not fits:
            outcome = BatchOutcome(
                line.id,
                line.number,
                "skipped",
                error=f"not run: its {quantize(amount)} USD would pass --max-cost "
                f"{quantize(self.cap.limit or Decimal(0))} USD",
            )
            return self._finished(outcome)
        self._note(running=+1)
        # Settled before the line stops counting as running, so a line waiting for room
        # sees what this one gave back before it decides that nothing else can.
        try:
            outcome = await self._run(planned)
            spent = outcome.cost_usd if outcome.ok else await self._failed_cost(line, amount)
        except BaseException:
            self.cap.settle(amount, amount)  # interrupted or broken: it may have been paid
            raise
        else:
            self.cap.settle(amount, spent)
        finally:
            self._note(running=-1)
        return self._finished(replace(outcome, cost_usd=spent))

    async def _run(self, planned: PlannedLine) -> BatchOutcome:
        line = planned.line
        options: dict[str, Any] = dict(line.fields)
        prompt = options.pop("prompt")
        options["output_dir"] = self.output_dir
        if line.key is not None and self.store is not None:
            options["idempotency_key"] = line.key
        if self.cache is not None:
            options["cache"] = self.cache
        if self.cap.limit is not None:
            # Fail over only to backends no dearer than the plan: the reservation holds.
            options["max_cost_usd"] = planned.cost_usd
        images = options.pop("images", None)
        for tries_left in (1, 0):
            try:
                if images:
                    result = await self.router.aedit(prompt, images, **options)
                else:
                    result = await self.router.agenerate(prompt, **options)
            except IdempotentRequestFailedError as exc:
                if exc.request_id is None:
                    return _failure(line, exc)
                collected = await self._collect(line, exc.request_id)
                if collected is not None:
                    return collected
                if not tries_left:
                    return _failure(line, exc)
                continue  # the key was given back: nothing was paid, so send it
            except ImageRouterError as exc:
                return _failure(line, exc)
            return _from_result(line, result)
        raise AssertionError("unreachable")

    async def _failed_cost(self, line: BatchLine, reserved: Decimal) -> Decimal:
        """What a failed line may have cost: its ledger tasks when its key kept a row (the
        key is given back only when nothing was paid), else its reservation."""
        if self.store is None or line.key is None:
            return reserved
        record = await asyncio.to_thread(self.store.lookup, IdempotencyKey.of(line.key))
        if record is None:
            return Decimal(0)
        return await asyncio.to_thread(self.record_cost, record)

    def _give_back(self, line: BatchLine, request_id: str) -> bool:
        """Drop the line's `failed` key when nothing of its request was paid (the store
        keeps it when anything may have been): True when the line may run again."""
        if self.store is None or line.key is None:
            return False
        key = IdempotencyKey.of(line.key)
        record = self.store.lookup(key)
        if record is None:
            return True
        if record.request_id != request_id or record.state is not KeyState.FAILED:
            return False
        self.store.failed(Claim(key, record.claim, record.request_id), record.error or "")
        return self.store.lookup(key) is None

    def _orphan(self, record: KeyRecord) -> bool:
        return (
            record.state is KeyState.RUNNING
            and self.store is not None
            and self.store.is_orphan(record)
        )

    async def _collect(self, line: BatchLine, request_id: str) -> BatchOutcome | None:
        """A line an earlier run may have paid for: wait (with resume passes) until its
        jobs' images are on disk, then report them; it is never sent again. None when
        nothing was paid after all (its creates were proven never made): its key is given
        back and the line may run."""
        ledger = self.router.ledger
        assert ledger is not None
        deadline = self.router.clock() + COLLECT_WAIT_S
        self._note(running=+1)
        try:
            while True:
                saved = await asyncio.to_thread(_saved, ledger, request_id)
                paths, in_flight, cost, served = (
                    saved.paths,
                    saved.in_flight,
                    saved.cost,
                    saved.served,
                )
                if len(paths) >= line.request.n or not saved.worth_waiting():
                    break
                if self.router.clock() >= deadline:
                    break
                await self.router.sleep(COLLECT_INTERVAL_S)
                await self.resume_pass()
        finally:
            self._note(running=-1)
        provider, model = served
        if paths:
            return BatchOutcome(
                line.id,
                line.number,
                "collected",
                provider,
                model,
                cost,
                tuple(paths),
                error=None
                if len(paths) >= line.request.n
                else f"{len(paths)} of {line.request.n} images were delivered",
                request_id=request_id,
            )
        if not in_flight and await asyncio.to_thread(self._give_back, line, request_id):
            return None
        why = (
            "may still be running or billed at the provider; `imagerouter resume` keeps "
            "looking it up and collects it"
            if in_flight
            else "an earlier run was paid for it but no image was delivered"
        )
        return BatchOutcome(
            line.id,
            line.number,
            "failed",
            provider,
            model,
            cost,
            error=f"request {request_id}: {why} (not sent again)",
            request_id=request_id,
        )

    # -- progress --------------------------------------------------------------------------

    def _note(self, *, running: int = 0) -> None:
        self.progress.running += running
        self.cap.wake()
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _finished(self, outcome: BatchOutcome) -> BatchOutcome:
        if outcome.ok:
            self.progress.done += 1
        else:
            self.progress.failed += 1
        self.progress.spent_usd += outcome.cost_usd
        self._note()
        return outcome


def _from_result(line: BatchLine, result: GenerationResult) -> BatchOutcome:
    return BatchOutcome(
        line.id,
        line.number,
        "cached" if result.cached else "succeeded",
        result.provider,
        result.model,
        result.cost_usd,
        tuple(str(image.path) for image in result.images),
        request_id=result.request_id,
        result=result,
    )


def _failure(line: BatchLine, exc: ImageRouterError) -> BatchOutcome:
    text = " ".join(str(exc).split())
    return BatchOutcome(
        line.id,
        line.number,
        "failed",
        error=f"{type(exc).__name__}: {text}",
        request_id=getattr(exc, "request_id", None),
    )


@dataclass(frozen=True)
class _Saved:
    """What the ledger holds of one request."""

    paths: list[str]
    accepted: bool  # a job the provider accepted is still running
    lost_at: datetime | None  # the newest create whose answer was lost (state unknown)
    cost: Decimal
    served: tuple[str | None, str | None]

    @property
    def in_flight(self) -> bool:
        return self.accepted or self.lost_at is not None

    def worth_waiting(self) -> bool:
        """An accepted job will finish; a lost create is proven absent (or found) only
        `ABSENT_AFTER_S` after it was made. Past that, a provider that cannot look creates
        up leaves it unknown for good: the line then reports it rather than block."""
        if self.accepted:
            return True
        if self.lost_at is None:
            return False
        settled_by = self.lost_at + timedelta(seconds=reconcile.ABSENT_AFTER_S + LOST_MARGIN_S)
        return datetime.now(UTC) < settled_by


def _saved(ledger: Ledger, request_id: str) -> _Saved:
    """A request's saved image paths, its jobs still in flight, what it cost, who served it."""
    with ledger.reading() as conn:
        paths = [
            str(row["path"])
            for row in conn.execute(
                "SELECT path FROM images WHERE request_id = ? ORDER BY saved_at, task_id, idx",
                (request_id,),
            )
        ]
        tasks = conn.execute("SELECT * FROM tasks WHERE request_id = ?", (request_id,)).fetchall()
    accepted = any(
        row["state"] in _IN_FLIGHT and row["provider_task_id"] is not None for row in tasks
    )
    lost = [
        _utc(row["created_at"])
        for row in tasks
        if row["state"] in _IN_FLIGHT and row["provider_task_id"] is None
    ]
    cost = sum((_task_cost(row) for row in tasks), Decimal(0))
    served = next(
        ((row["provider"], row["model"]) for row in tasks if row["provider_task_id"]),
        (None, None),
    )
    return _Saved(paths, accepted, max(lost) if lost else None, cost, served)


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _money(value: Decimal | str | float | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise RequestValidationError("max_cost", f"{value!r} is not an amount in USD") from None
    if not amount.is_finite() or amount <= 0:
        raise RequestValidationError("max_cost", f"{value!r} must be a positive amount in USD")
    return amount

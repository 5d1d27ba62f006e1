"""`imagerouter batch FILE.jsonl|.csv -o DIR`: many requests, priced first, resumable.

Every bad line is reported (`FILE:LINE: ...` on stderr) before anything is paid, exit 2.
`--dry-run` prices the file offline. A run shows a progress bar on a terminal and one plain
line per finished request otherwise; run the same command again after a kill and it goes on
where it stopped without paying twice (imagerouter/batch/run.py).
"""

from __future__ import annotations

import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..batch import (
    BatchFileError,
    BatchOutcome,
    BatchPlan,
    BatchProgress,
    ReportWriter,
    parse_file,
    plan_batch,
)
from ..batch.run import run_plan_sync
from ..emulated import emulated_errors
from .common import config_option, console, err_console, handle_errors, json_option, open_router
from .common import print_json as _print_json
from .reporting import CliFailure, ExitCode, one_line
from .text import printable, usd_texts

__all__ = ["COMMANDS", "batch"]


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output-dir",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the images go (needed unless --dry-run).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Requests running at once.",
)
@click.option(
    "--max-cost",
    "max_cost",
    default=None,
    help="Hard cap in USD for the whole batch, earlier runs of it included.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Report file, one JSON object per line (default: DIR/batch-report.jsonl).",
)
@click.option("--dry-run", is_flag=True, help="Price the file offline; send nothing.")
@click.option("--no-cache", "no_cache", is_flag=True, help="Do not answer from the result cache.")
@click.option(
    "--emulate",
    is_flag=True,
    help="Route through local emulators (no keys, no network, no charge).",
)
@config_option
@json_option
@handle_errors
def batch(
    file: Path,
    output_dir: Path | None,
    concurrency: int,
    max_cost: str | None,
    report_path: Path | None,
    dry_run: bool,
    no_cache: bool,
    emulate: bool,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Run every request in FILE (.jsonl or .csv, one request per line)."""
    limit = _max_cost(max_cost)
    if output_dir is None and not dry_run:
        raise click.UsageError("give -o DIR for the images (or --dry-run to price only)")
    source = str(file.expanduser().resolve())
    try:
        lines = parse_file(file)
    except BatchFileError as exc:
        _bad_lines(source, exc)
    with emulated_errors(emulate), open_router(config_path, emulate=emulate) as router:
        try:
            plan = plan_batch(router, lines, source=source)
        except BatchFileError as exc:
            _bad_lines(source, exc)
        if dry_run:
            _print_plan(plan, as_json)
            return
        assert output_dir is not None
        report = report_path or output_dir / "batch-report.jsonl"
        outcomes = _run(
            router,
            plan,
            output_dir,
            concurrency,
            limit,
            report,
            cache=False if no_cache else None,
            as_json=as_json,
        )
    _summary(plan, outcomes, report, as_json, emulate)
    if not all(outcome.ok for outcome in outcomes):
        sys.exit(ExitCode.FAILED)


def _max_cost(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        amount = Decimal(text.strip().removeprefix("$"))
    except InvalidOperation:
        amount = Decimal(-1)
    if not amount.is_finite() or amount <= 0:
        raise click.BadParameter(
            f"{text!r} is not a positive amount in USD", param_hint="--max-cost"
        )
    return amount


def _bad_lines(source: str, exc: BatchFileError) -> None:
    for problem in exc.problems:
        err_console.print(
            f"{source}:{problem.line}: {printable(problem.message)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    raise CliFailure(
        one_line(str(exc)), error_type=type(exc).__name__, exit_code=ExitCode.BAD_INPUT
    )


def _print_plan(plan: BatchPlan, as_json: bool) -> None:
    if as_json:
        _print_json(plan.to_dict())
        return
    costs = usd_texts([p.cost_usd for p in plan.lines] + [plan.total_usd])
    for planned, cost in zip(plan.lines, costs, strict=False):
        console.print(
            f"  {planned.line.id}  {planned.offer.provider} {planned.offer.model}  {cost}",
            markup=False,
            soft_wrap=True,
        )
    console.print(f"routed plan: {len(plan.lines)} request(s) for {costs[-1]}", markup=False)
    names = sorted(plan.by_provider)
    totals = usd_texts([plan.by_provider[name] for name in names])
    for name, total in zip(names, totals, strict=True):
        missing = plan.unserved.get(name, 0)
        note = f" ({missing} line(s) it cannot serve left out)" if missing else ""
        console.print(f"  all on {name}: {total}{note}", markup=False)


def _run(
    router: Any,
    plan: BatchPlan,
    output_dir: Path,
    concurrency: int,
    limit: Decimal | None,
    report_path: Path,
    *,
    cache: bool | None,
    as_json: bool,
) -> list[BatchOutcome]:
    total = len(plan.lines)
    tty = err_console.is_terminal and not as_json
    started = time.monotonic()
    finished = 0
    with ReportWriter(report_path) as report:
        bar = _bar() if tty else None
        task = bar.add_task("batch", total=total, status="") if bar is not None else None

        def on_progress(state: BatchProgress) -> None:
            if bar is not None and task is not None:
                spent = usd_texts([state.spent_usd])[0]
                bar.update(
                    task,
                    completed=state.done + state.failed,
                    status=(
                        f"done {state.done} failed {state.failed} running {state.running} "
                        f"spent {spent}"
                    ),
                )

        def on_outcome(outcome: BatchOutcome) -> None:
            nonlocal finished
            finished += 1
            report.add(outcome)
            if bar is None and not as_json:
                elapsed = time.monotonic() - started
                eta = elapsed / finished * (total - finished)
                cost = usd_texts([outcome.cost_usd])[0]
                why = f"  {one_line(outcome.error)}" if outcome.error else ""
                err_console.print(
                    f"[{finished}/{total}] {outcome.id} {outcome.status} "
                    f"{outcome.provider or '-'} {cost} eta {eta:.0f}s{why}",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )

        try:
            if bar is not None:
                bar.start()
            outcomes = run_plan_sync(
                router,
                plan,
                on_outcome=on_outcome,
                on_progress=on_progress,
                concurrency=concurrency,
                output_dir=output_dir,
                max_cost_usd=limit,
                cache=cache,
            )
        except KeyboardInterrupt:
            err_console.print(
                "interrupted: run the same command again to go on (paid lines are never paid "
                "again)",
                markup=False,
            )
            raise
        finally:
            if bar is not None:
                bar.stop()
        report.finish()
    return outcomes


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def _summary(
    plan: BatchPlan, outcomes: list[BatchOutcome], report: Path, as_json: bool, emulate: bool
) -> None:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    spent = sum((outcome.cost_usd for outcome in outcomes), Decimal(0))
    if as_json:
        _print_json(
            {
                "lines": len(outcomes),
                "counts": counts,
                "spent_usd": str(spent),
                "planned_usd": str(plan.total_usd),
                "report": str(report),
                "outcomes": [
                    outcome.to_dict() for outcome in sorted(outcomes, key=lambda o: o.line)
                ],
            }
        )
        return
    spent_text, plan_text = usd_texts([spent, plan.total_usd])
    parts = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    where = " (emulated: nothing was charged)" if emulate else ""
    console.print(
        f"{len(outcomes)} request(s): {parts}; spent {spent_text} (plan {plan_text}){where}",
        markup=False,
    )
    console.print(f"report: {report}", markup=False, soft_wrap=True)


COMMANDS = [batch]

"""`imagerouter spend`, `history`, `resume` and `health`: what happened and what it cost."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from ..emulated import close_orphans
from ..ledger import Ledger
from ..paths import default_ledger_path, emulated_ledger_path
from ..router import Router
from .common import config_option, console, handle_errors, json_option, load, print_json
from .text import cell, fit_last_column, fold_table, printable, usd_texts

_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """`7d`, `24h`, `30m`, `2w`, or an ISO date/time."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    match = _SINCE.match(text.strip())
    if match:
        try:
            return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise click.BadParameter(
                f"{text!r} reaches before year 1", param_hint="--since"
            ) from None

    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use 30m, 24h, 7d, 2w or an ISO date", param_hint="--since"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ledger(config_path: Path | None, emulated: bool = False) -> Ledger:
    loaded = load(config_path)
    if not emulated and loaded.config.ledger.url:
        from ..stores import open_ledger  # ledger.url: sqlite:///path or postgresql://...

        return open_ledger(loaded.config.ledger.url)
    path = loaded.config.ledger.path or default_ledger_path()
    # Emulated runs keep their own ledger (emulated.py); it is read only when asked for.
    return Ledger(emulated_ledger_path(path) if emulated else path)


_emulated_option = click.option(
    "--emulated", is_flag=True, help="Read the ledger of emulated runs (--emulate) instead."
)


@click.command()
@click.option("--since", default=None, help="30m, 24h, 7d, 2w or an ISO date.")
@click.option("--by", type=click.Choice(["provider", "model", "tier", "day", "key"]), default=None,
              help="key: per gateway key, by its configured name (never the key).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also draw spend per day by provider (PNG; needs matplotlib).")
@_emulated_option
@config_option
@json_option
@handle_errors
def spend(
    since: str | None,
    by: str | None,
    plot_path: Path | None,
    emulated: bool,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Spend, counts, failure rates, latency, and quoted-vs-billed drift."""
    from .compare_cmd import check_plot_path  # the chart's checks come before any work

    if plot_path is not None:
        check_plot_path(plot_path)
    ledger = _ledger(config_path, emulated)
    try:
        rows = ledger.spend(since=parse_since(since), by=by)
        if plot_path is not None:
            from ..plotting import spend_by_day, spend_chart

            days = spend_by_day(ledger, since=parse_since(since))
            spend_chart(days, plot_path, title=f"Spend per day by provider{_since(since)}")
    finally:
        ledger.close()
    if as_json:
        print_json({"since": since, "by": by, "rows": [row.as_dict() for row in rows]})
        return
    title = f"{' since ' + since if since else ''}{' by ' + by if by else ''}"
    console.print(_money_table(rows, f"Spend{title}", by or "total"))
    console.print(_reliability_table(rows, f"Requests and attempts{title}", by or "total"))


def _since(since: str | None) -> str:
    return f" since {since}" if since else ""


def _money_table(rows: list[Any], title: str, key: str) -> Table:
    """Only what was charged (or may have been); drift is billed minus quoted, `!` when any
    task's bill differed from its quote."""
    money = ("quoted", "billed", "drift")
    table = fold_table(title, (key, "images", *money), right=("images", *money))
    # One number of decimals for all money in the table, so amounts compare at a glance.
    count = len(rows)
    amounts = usd_texts(
        [row.quoted_usd for row in rows]
        + [row.billed_usd for row in rows]
        + [row.drift_usd if row.billed_usd is not None else None for row in rows]
    )
    for i, row in enumerate(rows):
        drift = cell(amounts[2 * count + i] + (" !" if row.drift_flagged else ""))
        if row.drift_flagged:
            drift.stylize("yellow")
        table.add_row(cell(row.key), str(row.images), amounts[i], amounts[count + i], drift)
    return table


def _reliability_table(rows: list[Any], title: str, key: str) -> Table:
    """Requests (served / failed, by who served them) next to attempts (by who tried them):
    the fail rate is failed attempts / finished attempts, both shown, so the figures agree
    even when a failed-over request is served by another backend."""
    # Two-line headers, so the table fits 80 columns without folding a figure.
    counts = ("requests", "served", "failed", "inter-\nrupted", "attempts", "failed\nattempts",
              "attempt\nfail rate", "p50 s")
    table = fold_table(title, (key, *counts), right=counts)
    for row in rows:
        running = row.attempts - row.finished_attempts
        table.add_row(
            cell(row.key),
            str(row.requests),
            str(row.served),
            str(row.failed),
            str(row.interrupted),
            f"{row.attempts} ({running} running)" if running else str(row.attempts),
            str(row.failed_attempts),
            f"{row.failure_rate:.0%}" if row.finished_attempts else "",
            f"{row.p50_latency_s:.1f}" if row.p50_latency_s is not None else "",
        )
    return table


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, help="How many requests.")
@click.option("--id", "request_id", default=None, help="Show one request in full (JSON).")
@_emulated_option
@config_option
@json_option
@handle_errors
def history(
    limit: int, request_id: str | None, emulated: bool, config_path: Path | None, as_json: bool
) -> None:
    """Recent requests, newest first."""
    ledger = _ledger(config_path, emulated)
    try:
        if request_id is not None:
            # Always JSON: every attempt, task and image as stored; JSON escapes control
            # characters, so a stored prompt cannot drive the terminal.
            print_json(_detail(ledger, request_id))
            return
        rows = ledger.history(limit=limit)
        # Paid tasks still being reconciled or collected (resume, the gateway's sweeper).
        watching = ledger.watching()
    finally:
        ledger.close()
    if as_json:
        print_json(
            {"requests": [{**row.as_dict(), "watching": watching.get(row.request_id, 0)}
                          for row in rows]}
        )
        return
    console.print(fit_last_column(console, lambda width: _history_table(rows, width, watching)))


def _history_table(
    rows: list[Any], prompt_width: int | None, watching: dict[str, int] | None = None
) -> Table:
    """The id whole (`history --id` needs it) with its time under it; the backend is the
    provider over the model. The prompt takes what is left."""
    table = fold_table(
        "Recent requests",
        ("id / when (UTC)", "status", "backend", "images", "cost", "prompt"),
        right=("images", "cost"),
        widths={"prompt": prompt_width} if prompt_width else None,
    )
    costs = usd_texts(row.cost_usd for row in rows)
    for row, cost in zip(rows, costs, strict=True):
        when = cell(row.request_id, f"{row.created_at:%Y-%m-%d %H:%M:%S}")
        table.add_row(
            when,
            # A possibly-billed or uncollected task is not forgotten: say it is watched.
            cell(row.status, f"watching {watching[row.request_id]}")
            if watching and watching.get(row.request_id)
            else cell(row.status),
            cell(row.provider or "-", row.model),
            str(row.images),
            cost,
            cell(row.prompt),  # from gateway clients too: escaped, never markup
        )
    return table


def _detail(ledger: Ledger, request_id: str) -> dict[str, Any]:
    try:
        return ledger.request_detail(request_id)
    except KeyError:
        raise click.BadParameter(
            f"no request {printable(request_id)!r} in the ledger; `imagerouter history` lists "
            "the ids",
            param_hint="--id",
        ) from None


@click.command()
@click.option(
    "--output-dir",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Save into this directory instead of each request's own (e.g. its disk is full).",
)
@_emulated_option
@config_option
@json_option
@handle_errors
def resume(
    output_dir: Path | None, emulated: bool, config_path: Path | None, as_json: bool
) -> None:
    """Collect paid jobs whose images were never saved (after a crash, a kill or a full
    disk), look possibly-billed creates up again, and close what a killed run left open."""
    loaded = load(config_path)
    if emulated:
        # An emulated job's emulator died with its run: close such jobs, contact nothing.
        emulated_path = emulated_ledger_path(loaded.config.ledger.path or default_ledger_path())
        closed = close_orphans(emulated_path)
        if as_json:
            print_json({"tasks": [], "closed_emulated": closed})
        else:
            console.print(f"closed {closed} emulated job(s) whose emulator is gone")
        return
    router = Router(loaded.config, plugins=loaded.plugins)
    try:
        outcomes = router.resume(output_dir=output_dir)
    finally:
        router.close()
    if as_json:
        print_json({"tasks": [outcome.to_dict() for outcome in outcomes]})
        return
    if not outcomes:
        console.print("nothing to resume: every accepted job has its images on disk")
    for outcome in outcomes:
        # Provider text and stored paths: escaped, never markup; ids and paths never broken.
        line = f"{outcome.task_id} ({outcome.provider}): {outcome.state} {outcome.detail}"
        console.print(cell(line), soft_wrap=True)
        for path in outcome.images:
            console.print(cell(f"  {path}"), soft_wrap=True)


@click.command()
@click.option(
    "--check",
    "free_checks",
    is_flag=True,
    help="Also run each provider's free check (balance / health endpoint; never a paid job).",
)
@config_option
@json_option
@handle_errors
def health(free_checks: bool, config_path: Path | None, as_json: bool) -> None:
    """Backend health as this process sees it (passive: no paid probes)."""
    loaded = load(config_path)
    router = Router(loaded.config, plugins=loaded.plugins, ledger=False)
    stats = router.health_snapshot()
    checks = {}
    if free_checks or loaded.config.health.free_checks:
        checks = {
            name: None
            if check is None
            else {
                "ok": check.ok,
                "detail": check.detail,
                "balance_usd": check.balance_usd,
            }
            for name, check in router.free_checks().items()
        }
    if as_json:
        print_json({"backends": [item.to_dict() for item in stats], "checks": checks})
        return
    for name, check in checks.items():
        console.print(_check_line(name, check))
    table = fold_table(
        "Backend health",
        ("provider", "model", "operation", "state", "failures", "p50 s", "retry in"),
        right=("failures", "p50 s", "retry in"),
    )
    for item in stats:
        provider, model, operation = item.key
        table.add_row(
            cell(provider),
            cell(model),
            cell(operation),
            item.state.value,
            str(item.consecutive_failures),
            f"{item.p50_latency_s:.1f}" if item.p50_latency_s is not None else "",
            f"{item.retry_in_s:.0f}s" if item.retry_in_s else "",
        )
    console.print(table)


def _check_line(name: str, check: dict[str, Any] | None) -> Text:
    """`runapi: ok balance $12.34`. A provider's detail usually is the balance already, so
    the balance is printed once, from the number, and the detail only when there is none."""
    line = Text(f"{printable(name)}: ")
    if check is None:
        return line.append("no free check")
    line.append("ok" if check["ok"] else "failed", style="green" if check["ok"] else "red")
    if check["balance_usd"] is not None:
        [balance] = usd_texts([check["balance_usd"]])
        return line.append(f" balance {balance}")
    detail = str(check["detail"] or "")
    # Errors name their provider first; the line already does.
    detail = detail.removeprefix(f"{name}: ")
    return line.append(f" {printable(detail)}" if detail else "")


COMMANDS = [spend, history, resume, health]

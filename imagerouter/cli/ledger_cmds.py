"""`imagerouter spend`, `history`, `resume` and `health`: what happened and what it cost."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..ledger import Ledger
from ..paths import default_ledger_path
from ..router import Router
from .common import config_option, console, handle_errors, json_option, load, print_json

_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """`7d`, `24h`, `30m`, `2w`, or an ISO date/time."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    match = _SINCE.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use 30m, 24h, 7d, 2w or an ISO date", param_hint="--since"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ledger(config_path: Path | None) -> Ledger:
    loaded = load(config_path)
    return Ledger(loaded.config.ledger.path or default_ledger_path())


@click.command()
@click.option("--since", default=None, help="30m, 24h, 7d, 2w or an ISO date.")
@click.option("--by", type=click.Choice(["provider", "model", "tier", "day"]), default=None)
@config_option
@json_option
@handle_errors
def spend(since: str | None, by: str | None, config_path: Path | None, as_json: bool) -> None:
    """Spend, counts, failure rates, latency, and quoted-vs-billed drift."""
    ledger = _ledger(config_path)
    try:
        rows = ledger.spend(since=parse_since(since), by=by)
    finally:
        ledger.close()
    data = [_row_dict(row) for row in rows]
    if as_json:
        print_json({"since": since, "by": by, "rows": data})
        return
    table = Table(title=f"Spend{' since ' + since if since else ''}{' by ' + by if by else ''}")
    for column in (
        by or "total",
        "requests",
        "served",
        "failed",
        "fail rate",
        "images",
        "quoted",
        "billed",
        "drift",
        "p50 s",
    ):
        table.add_column(column)
    for item in data:
        drift = item["drift_usd"] or ""
        if item["drift_flagged"]:
            drift = f"[yellow]{drift} !"
        table.add_row(
            str(item["key"]),
            str(item["requests"]),
            str(item["served"]),
            str(item["failed"]),
            f"{item['failure_rate']:.0%}",
            str(item["images"]),
            f"${item['quoted_usd']}",
            f"${item['billed_usd']}" if item["billed_usd"] is not None else "",
            drift,
            f"{item['p50_latency_s']:.1f}" if item["p50_latency_s"] is not None else "",
        )
    console.print(table)


def _row_dict(row: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(row)
    for key in ("quoted_usd", "billed_usd", "drift_usd"):
        if data.get(key) is not None:
            data[key] = str(data[key])
    return data


@click.command()
@click.option("--limit", type=int, default=20)
@click.option("--id", "request_id", default=None, help="Show one request in full.")
@config_option
@json_option
@handle_errors
def history(limit: int, request_id: str | None, config_path: Path | None, as_json: bool) -> None:
    """Recent requests, newest first."""
    ledger = _ledger(config_path)
    try:
        if request_id:
            print_json(ledger.request_detail(request_id))
            return
        rows = ledger.history(limit=limit)
    finally:
        ledger.close()
    if as_json:
        print_json({"requests": [_row_dict(row) for row in rows]})
        return
    table = Table(title="Recent requests")
    for column in ("when", "id", "status", "provider", "model", "images", "cost", "prompt"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row.created_at)[:19],
            row.request_id,
            row.status,
            row.provider or "",
            row.model or "",
            str(row.images),
            f"${row.cost_usd}" if row.cost_usd is not None else "",
            row.prompt,
        )
    console.print(table)


@click.command()
@config_option
@json_option
@handle_errors
def resume(config_path: Path | None, as_json: bool) -> None:
    """Collect paid jobs whose images were never saved (after a crash or a kill)."""
    loaded = load(config_path)
    router = Router(loaded.config, plugins=loaded.plugins)
    try:
        outcomes = router.resume()
    finally:
        router.close()
    if as_json:
        print_json({"tasks": [outcome.to_dict() for outcome in outcomes]})
        return
    if not outcomes:
        console.print("nothing to resume: every accepted job has its images on disk")
    for outcome in outcomes:
        console.print(f"{outcome.task_id} ({outcome.provider}): {outcome.state} {outcome.detail}")
        for path in outcome.images:
            console.print(f"  {path}")


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
        if check is None:
            console.print(f"{name}: no free check")
        else:
            balance = (
                f", balance ${check['balance_usd']}" if check["balance_usd"] is not None else ""
            )
            state = "[green]ok[/green]" if check["ok"] else "[red]failed[/red]"
            console.print(f"{name}: {state} {check['detail']}{balance}")
    table = Table(title="Backend health")
    for column in ("provider", "model", "operation", "state", "failures", "p50 s", "retry in"):
        table.add_column(column)
    for item in stats:
        provider, model, operation = item.key
        table.add_row(
            provider,
            model,
            operation,
            item.state.value,
            str(item.consecutive_failures),
            f"{item.p50_latency_s:.1f}" if item.p50_latency_s is not None else "",
            f"{item.retry_in_s:.0f}s" if item.retry_in_s else "",
        )
    console.print(table)


COMMANDS = [spend, history, resume, health]

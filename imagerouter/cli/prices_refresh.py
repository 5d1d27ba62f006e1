"""`imagerouter prices` (the effective tables), `prices --drift` and `prices refresh`.

`prices` alone prints what quote_cmds.prices always printed (now with the live source of each
leaf); `--drift` what the newest live snapshot changed against the shipped tables;
`refresh` reads every provider's published prices (free GETs, never a job) and stores them
dated under the imagerouter home (imagerouter/live_prices.py, docs/prices.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ..emulated import Emulators
from ..live_prices import (
    DriftRow,
    RefreshResult,
    drift,
    is_older_than,
    latest_snapshot,
    prices_dir,
    refresh,
)
from . import quote_cmds
from .common import config_option, console, handle_errors, json_option, load, print_json
from .reporting import ExitCode
from .text import cell, fold_table, usd_texts

__all__ = ["COMMANDS", "prices"]


@click.group(invoke_without_command=True)
@click.option(
    "--drift",
    "show_drift",
    is_flag=True,
    help="Show what the live prices changed against the shipped tables.",
)
@config_option
@json_option
@click.pass_context
@handle_errors
def prices(ctx: click.Context, show_drift: bool, config_path: Path | None, as_json: bool) -> None:
    """The effective price tables: shipped data, live prices, the config's overrides."""
    if ctx.invoked_subcommand is not None:
        return
    if not show_drift:
        ctx.invoke(quote_cmds.prices, config_path=config_path, as_json=as_json)
        return
    loaded = load(config_path)
    providers = loaded.plugins.providers()
    rows = drift(providers, loaded.config)
    snapshots = [s for s in (latest_snapshot(loaded.config, n) for n in sorted(providers)) if s]
    if as_json:
        print_json(
            {
                "dir": str(prices_dir(loaded.config)),
                "live": loaded.config.prices.live,
                "snapshots": [
                    {
                        "provider": s.provider,
                        "fetched_at": s.fetched_at,
                        "as_of": s.as_of,
                        "source": s.source,
                        "path": str(s.path),
                        "skipped": list(s.skipped),
                    }
                    for s in snapshots
                ],
                "drift": [row.to_dict() for row in rows],
            }
        )
        return
    if not snapshots:
        console.print("No live prices are stored yet: run `imagerouter prices refresh`.")
        return
    for snapshot in snapshots:
        shipped = providers[snapshot.provider].price_table()
        stale = is_older_than(snapshot, shipped)
        note = f" (older than the shipped table, read {shipped.read_on}: not used)" if stale else ""
        console.print(
            cell(
                f"{snapshot.provider}: live prices fetched {snapshot.fetched_at} "
                f"from {snapshot.source}{note}"
            )
        )
    if not loaded.config.prices.live:
        console.print("prices.live is false: quotes use the shipped tables.", style="yellow")
    if not rows:
        console.print("The live prices match the shipped tables.")
        return
    console.print(_drift_table(rows))


def _drift_table(rows: list[DriftRow]) -> object:
    table = fold_table(
        "Live prices vs shipped tables (USD per image)",
        ("provider", "model.operation.dimensions", "shipped", "live", "change"),
        right=("shipped", "live", "change"),
    )
    count = len(rows)
    money = usd_texts(
        [r.shipped_usd for r in rows] + [r.live_usd for r in rows] + [r.change_usd for r in rows]
    )
    for i, row in enumerate(rows):
        change = money[2 * count + i]
        if row.change_usd is not None and row.change_usd > 0:
            change = "+" + change
        table.add_row(
            cell(row.provider), cell(row.path), money[i] or "new", money[count + i], change
        )
    return table


@prices.command("refresh")
@click.option(
    "--provider",
    "names",
    multiple=True,
    help="Only these providers (repeat the option for several).",
)
@click.option(
    "--emulate",
    is_flag=True,
    help="Read the local emulators' price endpoints (stored apart, as emulated).",
)
@config_option
@json_option
@click.pass_context
@handle_errors
def refresh_command(
    ctx: click.Context,
    names: tuple[str, ...],
    emulate: bool,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Read the providers' published prices and store them dated; quotes use them next."""
    loaded = load(config_path)
    providers = loaded.plugins.providers()
    for name in names:
        if name not in providers:
            raise click.BadParameter(
                f"no provider {name!r}; known: {', '.join(sorted(providers)) or 'none'}",
                param_hint="--provider",
            )
    chosen = {n: p for n, p in providers.items() if not names or n in names}
    if emulate:
        with Emulators.start(loaded.plugins) as emulators:
            config = emulators.configure(loaded.config)
            results = asyncio.run(refresh(chosen, config))
    else:
        config = loaded.config
        results = asyncio.run(refresh(chosen, config))
    if as_json:
        print_json(
            {"dir": str(prices_dir(config)), "results": [result.to_dict() for result in results]}
        )
    else:
        for result in results:
            console.print(_line(result))
    if any(result.status == "failed" for result in results):
        ctx.exit(ExitCode.FAILED)


def _line(result: RefreshResult) -> object:
    text = f"{result.provider}: {result.status} ({result.detail})"
    if result.changed:
        text += f"; changed: {', '.join(result.changed)}"
    if result.path is not None:
        text += f" -> {result.path}"
    line = cell(text)
    if result.status == "failed":
        line.stylize("red")
    for skipped in result.skipped:
        line.append(f"\n  skipped {skipped}", style="dim")
    return line


COMMANDS = [prices]

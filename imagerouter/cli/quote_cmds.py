"""`imagerouter quote`, `prices` and `providers`: what it would cost, offline."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from ..offers import Offer
from ..request import ImageInput
from ..router import Router
from .common import config_option, console, handle_errors, json_option, load, print_json
from .request_options import check_providers, request_fields, request_options
from .text import cell, fit_last_column, fold_table, usd_texts


@click.command()
@click.argument("prompt", required=False, default="a quote")
@request_options
@click.option(
    "--edit-images",
    "edit_images",
    type=click.IntRange(1, 16),
    default=None,
    help="Quote an edit with K input images.",
)
@click.option("--mask", "with_mask", is_flag=True, help="Quote an edit with a mask.")
@config_option
@json_option
@handle_errors
def quote(
    prompt: str,
    edit_images: int | None,
    with_mask: bool,
    config_path: Path | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Every backend's offer for PROMPT: eligible first, cheapest first. No call is made."""
    fields = request_fields(**options)
    if with_mask and not edit_images:
        raise click.UsageError("--mask quotes an edit: give --edit-images K too")
    if edit_images:
        fields["images"] = [_placeholder(i) for i in range(edit_images)]
        if with_mask:
            fields["mask"] = _placeholder(-1)
    loaded = load(config_path)
    check_providers(fields, loaded.plugins.providers())
    router = Router(loaded.config, plugins=loaded.plugins, ledger=False)
    offers = router.quote(prompt, **fields)
    if as_json:
        print_json({"offers": [offer.to_dict() for offer in offers]})
        return
    console.print(fit_last_column(console, lambda width: _offers_table(offers, width)))


def _placeholder(index: int) -> ImageInput:
    label = "<mask>" if index < 0 else f"<input {index + 1}>"
    return ImageInput(kind="bytes", data=b"", label=label)


def _offers_table(offers: list[Offer], note_width: int | None) -> Table:
    """Backend (provider over model), the native parameters one per line so none is split,
    prices with one number of decimals; the note (or the reason an offer is out) takes what
    width is left."""
    tiers = any(offer.tier for offer in offers)
    columns = ["backend", *(["tier"] if tiers else []), "params", "tasks", "per\nimage", "total",
               "note"]
    table = fold_table(
        "Offers (eligible first, cheapest first)",
        columns,
        right=("tasks", "per\nimage", "total"),
        widths={"note": note_width} if note_width else None,
    )
    money = usd_texts([o.per_image_usd for o in offers] + [o.total_usd for o in offers])
    for i, offer in enumerate(offers):
        note = offer.reason if not offer.eligible else "; ".join(offer.notes)
        cells: list[Text | str] = [cell(offer.provider, offer.model)]
        if tiers:
            cells.append(cell(f"{offer.tier}[{offer.variant}]" if offer.tier else ""))
        cells += [
            cell(*_params(offer.params)),
            str(offer.tasks) if offer.eligible else "",
            money[i],
            money[len(offers) + i],
            cell(note or ""),
        ]
        table.add_row(*cells, style=None if offer.eligible else "dim")
    return table


def _params(params: Any) -> list[str]:
    def show(value: Any) -> str:
        if isinstance(value, dict) and set(value) == {"width", "height"}:
            return f"{value['width']}x{value['height']}"
        return str(value)

    return [f"{key}={show(value)}" for key, value in params.items()]


@click.command()
@config_option
@json_option
@handle_errors
def prices(config_path: Path | None, as_json: bool) -> None:
    """The effective price tables: shipped data plus the config's overrides."""
    loaded = load(config_path)
    router = Router(loaded.config, plugins=loaded.plugins, ledger=False)
    tables = router.prices()
    if as_json:
        print_json({"prices": [table.to_dict() for table in tables.values()]})
        return
    for name, table in tables.items():
        grid = fold_table(
            f"{name}: {table.source} (read {table.read_on})",
            ("model.operation.dimensions", "USD per image", "source"),
            right=("USD per image",),
        )
        rows = list(table.rows())
        # As stored (every decimal the source gave), one number of decimals for the table.
        amounts = usd_texts(Decimal(str(amount)) for _path, amount in rows)
        for (path, _amount), amount in zip(rows, amounts, strict=True):
            grid.add_row(
                cell(path), amount, _source(path, table)
            )
        console.print(grid)
        if table.notes:
            console.print(cell(table.notes), style="dim")
            console.print()


def _source(path: str, table: Any) -> str:
    if path in table.overridden:
        return "your config"
    return f"live {table.live_on[:10]}" if path in table.live else "shipped"


@click.command()
@json_option
def providers(as_json: bool) -> None:
    """Installed provider plugins, their versions, and any that failed to load."""
    from ..plugins import Plugins

    plugins = Plugins.load()
    found = plugins.providers()
    data: dict[str, list[dict[str, Any]]] = {
        "plugins": [
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "hooks": list(info.hooks),
            }
            for info in plugins.info()
        ],
        "providers": [
            {
                "name": name,
                "title": provider.title,
                "version": provider.version,
                "key_env_var": provider.key_env_var,
                "idempotent_creates": provider.idempotent_creates,
                "ships_emulator": type(provider).emulator is not _base_emulator(),
            }
            for name, provider in found.items()
        ],
        "errors": [
            {"plugin": e.plugin, "stage": e.stage, "error": e.error} for e in plugins.errors
        ],
    }
    if as_json:
        print_json(data)
        return
    table = fold_table("Providers", ("name", "title", "version", "key", "idempotent creates"))
    for item in data["providers"]:
        table.add_row(
            cell(item["name"]),
            cell(item["title"]),
            cell(item["version"]),
            cell(item["key_env_var"]),
            "yes" if item["idempotent_creates"] else "no (reconciled by client_ref)",
        )
    console.print(table)
    for error in data["errors"]:
        # A plugin's error text is printed as text, never as markup.
        line = cell(f"plugin {error['plugin']} failed ({error['stage']}): {error['error']}")
        line.stylize("red")
        console.print(line, soft_wrap=True)


def _base_emulator() -> Any:
    from ..provider import Provider

    return Provider.emulator


# `prices` is registered as a group by prices_refresh.py (it adds `refresh` and `--drift`).
COMMANDS = [quote, providers]

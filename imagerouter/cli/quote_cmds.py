"""`imagerouter quote`, `prices` and `providers`: what it would cost, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..offers import Offer
from ..pricing import quantize
from ..request import ImageInput
from ..router import Router
from .common import config_option, console, handle_errors, json_option, load, print_json
from .request_options import request_fields, request_options


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
    if edit_images:
        fields["images"] = [_placeholder(i) for i in range(edit_images)]
        if with_mask:
            fields["mask"] = _placeholder(-1)
    loaded = load(config_path)
    router = Router(loaded.config, plugins=loaded.plugins, ledger=False)
    offers = router.quote(prompt, **fields)
    if as_json:
        print_json({"offers": [offer.to_dict() for offer in offers]})
        return
    console.print(_offers_table(offers))


def _placeholder(index: int) -> ImageInput:
    label = "<mask>" if index < 0 else f"<input {index + 1}>"
    return ImageInput(kind="bytes", data=b"", label=label)


def _offers_table(offers: list[Offer]) -> Table:
    tiers = any(offer.tier for offer in offers)
    table = Table(title="Offers (eligible first, cheapest first)")
    columns = ["provider", "model", *(["tier"] if tiers else []), "params", "tasks"]
    for column in [*columns, "per image", "total", "note"]:
        table.add_column(
            column,
            justify="right" if column in ("per image", "total") else "left",
            no_wrap=column in ("provider", "model", "tasks", "per image", "total"),
            overflow="fold",
        )
    for offer in offers:
        note = offer.reason if not offer.eligible else "; ".join(offer.notes)
        cells = [offer.provider, offer.model]
        if tiers:
            cells.append(f"{offer.tier}[{offer.variant}]" if offer.tier else "")
        cells += [
            _params(offer.params),
            str(offer.tasks) if offer.eligible else "",
            _usd(offer.per_image_usd),
            _usd(offer.total_usd),
            note or "",
        ]
        table.add_row(*cells, style=None if offer.eligible else "dim")
    return table


def _params(params: Any) -> str:
    def show(value: Any) -> str:
        if isinstance(value, dict) and set(value) == {"width", "height"}:
            return f"{value['width']}x{value['height']}"
        return str(value)

    return " ".join(f"{key}={show(value)}" for key, value in params.items())


def _usd(amount: Any) -> str:
    return "" if amount is None else f"${quantize(amount)}"


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
        grid = Table(title=f"{name}: {table.source} (read {table.read_on})")
        grid.add_column("model.operation.dimensions")
        grid.add_column("USD per image", justify="right")
        grid.add_column("")
        for path, amount in table.rows():
            mark = "override" if path in table.overridden else ""
            grid.add_row(path, f"{amount}", mark)
        console.print(grid)
        if table.notes:
            console.print(f"[dim]{table.notes}[/dim]\n")


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
    table = Table(title="Providers")
    for column in ("name", "title", "version", "key", "idempotent creates"):
        table.add_column(column)
    for item in data["providers"]:
        table.add_row(
            str(item["name"]),
            str(item["title"]),
            str(item["version"]),
            str(item["key_env_var"]),
            "yes" if item["idempotent_creates"] else "no (reconciled by client_ref)",
        )
    console.print(table)
    for error in data["errors"]:
        console.print(
            f"[red]plugin {error['plugin']} failed ({error['stage']}):[/red] {error['error']}"
        )


def _base_emulator() -> Any:
    from ..provider import Provider

    return Provider.emulator


COMMANDS = [quote, prices, providers]

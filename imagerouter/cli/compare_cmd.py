"""`imagerouter compare`: per-image price by model x quality x size x provider, offline.

Each cell is the provider's cheapest eligible offer for one image of that model, quality and
size (generation), from the same quoting the router routes by (shipped tables, live prices,
the config's overrides); the cheapest provider of each row is marked. Tiers are left out on
purpose: the matrix compares providers, not a tier's choices. `--plot FILE.png` draws it
(imagerouter/plotting.py, the optional `plot` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..errors import RequestValidationError
from ..plotting import PlotUnavailableError, PriceGroup, price_chart, require_matplotlib
from ..request import QUALITIES
from ..router import Router
from .common import config_option, console, handle_errors, json_option, load, print_json
from .request_options import check_providers
from .text import cell, fold_table, usd_texts

__all__ = ["COMMANDS", "CompareRow", "check_plot_path", "compare", "compare_matrix"]

DEFAULT_SIZES = ("1024x1024", "1024x1536", "1536x1024")
# "default": no quality asked for (what a backend does when none is given, which for some
# backends is the only way to use them at all).
DEFAULT_QUALITY = "default"


@dataclass(frozen=True)
class CompareRow:
    model: str
    quality: str
    size: str
    prices: dict[str, Decimal | None]  # provider -> USD per image (None: not offered)
    reasons: dict[str, str] = field(default_factory=dict)  # why a provider has no price

    @property
    def cheapest(self) -> tuple[str, ...]:
        known = {name: price for name, price in self.prices.items() if price is not None}
        if not known:
            return ()
        low = min(known.values())
        return tuple(sorted(name for name, price in known.items() if price == low))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "quality": None if self.quality == DEFAULT_QUALITY else self.quality,
            "size": self.size,
            "prices": {k: None if v is None else str(v) for k, v in self.prices.items()},
            "cheapest": list(self.cheapest),
            "reasons": dict(self.reasons),
        }


def compare_matrix(
    router: Router,
    *,
    models: Sequence[str],
    qualities: Sequence[str],
    sizes: Sequence[str],
    providers: Sequence[str] = (),
) -> list[CompareRow]:
    """One row per model x quality x size, each provider's (default: every installed one)
    cheapest eligible per-image price."""
    providers = sorted(providers or router.catalog.entries)
    rows = []
    for model in models:
        for quality in qualities:
            for size in sizes:
                options: dict[str, Any] = {
                    "model": model,
                    "size": size,
                    "n": 1,
                    "providers": tuple(providers),
                }
                if quality != DEFAULT_QUALITY:
                    options["quality"] = quality
                prices: dict[str, Decimal | None] = dict.fromkeys(providers)
                reasons: dict[str, str] = {}
                try:
                    offers = router.quote("compare", **options)
                except RequestValidationError as exc:
                    reasons = dict.fromkeys(providers, str(exc))
                    offers = []
                for offer in offers:
                    if offer.provider not in prices:
                        continue
                    price = offer.per_image_usd
                    if not offer.eligible or price is None:
                        reasons.setdefault(offer.provider, offer.reason or "no price")
                        continue
                    best = prices.get(offer.provider)
                    if best is None or price < best:
                        prices[offer.provider] = price
                        reasons.pop(offer.provider, None)
                rows.append(CompareRow(model, quality, size, prices, reasons))
    return rows


def _models(router: Router) -> list[str]:
    """Every model some provider's price table knows, in first-seen order."""
    seen: dict[str, None] = {}
    for table in router.prices().values():
        for model in table.prices:
            seen.setdefault(str(model), None)
    return list(seen)


@click.command()
@click.option("--model", "models", multiple=True, help="Only these models (repeatable).")
@click.option(
    "--quality",
    "qualities",
    multiple=True,
    type=click.Choice([DEFAULT_QUALITY, *QUALITIES]),
    help="Only these qualities (repeatable; 'default' = none asked for).",
)
@click.option(
    "--size",
    "sizes",
    multiple=True,
    help=f"Only these WxH sizes (repeatable; default {', '.join(DEFAULT_SIZES)}).",
)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    help="Only these providers (repeatable; default: every installed one).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw the matrix as a bar chart (PNG; needs matplotlib).",
)
@config_option
@json_option
@handle_errors
def compare(
    models: tuple[str, ...],
    qualities: tuple[str, ...],
    sizes: tuple[str, ...],
    providers: tuple[str, ...],
    plot_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Per-image price by model x quality x size x provider; the cheapest marked. Offline."""
    if plot_path is not None:
        check_plot_path(plot_path)
    loaded = load(config_path)
    # No default tier: the matrix compares every provider, not one tier's variants.
    config = loaded.config.model_copy(update={"default_tier": None})
    router = Router(config, plugins=loaded.plugins, ledger=False)
    known = _models(router)
    check_providers({"providers": providers}, router.catalog.entries)
    columns = sorted(providers or router.catalog.entries)
    for model in models:
        if model not in known:
            raise click.BadParameter(
                f"no price table knows model {model!r}; known: {', '.join(known)}",
                param_hint="--model",
            )
    rows = compare_matrix(
        router,
        models=models or known,
        qualities=qualities or (DEFAULT_QUALITY, *QUALITIES),
        sizes=sizes or DEFAULT_SIZES,
        providers=columns,
    )
    if plot_path is not None:
        price_chart(_groups(rows), plot_path, title="Price per image by provider")
    if as_json:
        print_json(
            {
                "providers": columns,
                "rows": [row.to_dict() for row in rows],
                "plot": str(plot_path) if plot_path else None,
            }
        )
        return
    console.print(_table(rows, columns))
    if plot_path is not None:
        console.print(cell(f"chart written to {plot_path}"))


def check_plot_path(path: Path) -> None:
    """Before any work: the extra is installed and the file is a .png."""
    if path.suffix.lower() != ".png":
        raise click.BadParameter(
            f"{str(path)!r}: the chart is a PNG file (*.png)", param_hint="--plot"
        )
    try:
        require_matplotlib()
    except PlotUnavailableError as exc:
        raise click.UsageError(str(exc)) from None


def _groups(rows: Sequence[CompareRow]) -> list[PriceGroup]:
    return [
        PriceGroup(f"{row.model} {row.quality} {row.size}", row.prices, frozenset(row.cheapest))
        for row in rows
    ]


def _table(rows: Sequence[CompareRow], providers: Sequence[str]) -> Table:
    table = fold_table(
        "Price per image (USD; * cheapest; blank: not offered)",
        ("model", "quality", "size", *providers),
        right=tuple(providers),
    )
    money = usd_texts(row.prices[name] for row in rows for name in providers)
    for index, row in enumerate(rows):
        cheapest = set(row.cheapest)
        cells = []
        for offset, name in enumerate(providers):
            text = money[index * len(providers) + offset]
            cells.append(cell(f"{text} *" if name in cheapest else text))
            if name in cheapest:
                cells[-1].stylize("bold green")
        table.add_row(cell(row.model), cell(row.quality), cell(row.size), *cells)
    return table


COMMANDS = [compare]

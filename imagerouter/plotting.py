"""Charts as PNG files: price per image by provider (`compare --plot`), spend over time by
provider (`spend --plot`).

matplotlib is an optional extra (`pip install 'imagerouter-core[plot]'`), never a core
dependency: it is imported only when a chart is drawn, and `require_matplotlib()` turns its
absence into one clear error before any work is done. Figures are drawn on the Agg canvas
directly (no pyplot, so no global state and no display is needed) at a fixed pixel size, so a
chart's size is known: `CHART_SIZE`.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = [
    "CHART_SIZE",
    "INSTALL_HINT",
    "PlotUnavailableError",
    "PriceGroup",
    "price_chart",
    "require_matplotlib",
    "spend_by_day",
    "spend_chart",
]

CHART_SIZE = (1200, 700)  # pixels, width x height
_DPI = 100
INSTALL_HINT = "pip install 'imagerouter-core[plot]' (or pip install matplotlib)"
# One fixed colour per provider position, so the same provider keeps its colour in a chart.
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


class PlotUnavailableError(RuntimeError):
    """matplotlib (the `plot` extra) is not installed."""


@dataclass(frozen=True)
class PriceGroup:
    """One group of bars: a label (model / quality / size) and each provider's price."""

    label: str
    prices: Mapping[str, Decimal | None]  # None: that provider cannot serve it
    cheapest: frozenset[str] = frozenset()


def require_matplotlib() -> None:
    """Raise PlotUnavailableError (one line, with the install command) if it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailableError(f"charts need matplotlib: {INSTALL_HINT}") from None


def _figure(title: str) -> Any:
    require_matplotlib()
    from matplotlib.figure import Figure

    width, height = CHART_SIZE
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    figure.suptitle(title)
    return figure


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    # No bbox_inches="tight": it would change the pixel size; tight_layout fits the labels.
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=_DPI)
    return path


def price_chart(
    groups: Sequence[PriceGroup], path: Path, *, title: str = "Price per image by provider"
) -> Path:
    """Grouped bars: one group per label, one bar per provider; the cheapest bar is edged
    in black and starred."""
    figure = _figure(title)
    axes = figure.add_subplot(1, 1, 1)
    providers = sorted({name for group in groups for name in group.prices})
    width = 0.8 / max(len(providers), 1)
    for index, provider in enumerate(providers):
        xs, heights, edges = [], [], []
        for position, group in enumerate(groups):
            price = group.prices.get(provider)
            if price is None:
                continue
            xs.append(position + (index - (len(providers) - 1) / 2) * width)
            heights.append(float(price))
            edges.append("black" if provider in group.cheapest else "none")
        bars = axes.bar(
            xs,
            heights,
            width=width,
            label=provider,
            color=_COLOURS[index % len(_COLOURS)],
            edgecolor=edges,
            linewidth=1.5,
        )
        for bar, edge in zip(bars, edges, strict=True):
            if edge == "black":
                axes.annotate(
                    "*",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                )
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels([group.label for group in groups], rotation=60, ha="right", fontsize=8)
    axes.set_ylabel("USD per image")
    if providers:
        legend = axes.legend(title="provider (* cheapest)")
        for handle in legend.legend_handles:  # the swatch, not the first bar's "cheapest" edge
            if handle is not None:
                handle.set_edgecolor("none")
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def spend_chart(
    days: Mapping[str, Mapping[str, Decimal]],
    path: Path,
    *,
    title: str = "Spend per day by provider",
) -> Path:
    """Stacked bars: one bar per day (YYYY-MM-DD), one segment per provider."""
    figure = _figure(title)
    axes = figure.add_subplot(1, 1, 1)
    labels = sorted(days)
    providers = sorted({name for day in days.values() for name in day})
    bottoms = [0.0] * len(labels)
    for index, provider in enumerate(providers):
        heights = [float(days[day].get(provider, Decimal(0))) for day in labels]
        axes.bar(
            range(len(labels)),
            heights,
            bottom=bottoms,
            label=provider,
            color=_COLOURS[index % len(_COLOURS)],
        )
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("USD")
    if providers:
        axes.legend(title="provider")
    else:
        axes.text(
            0.5,
            0.5,
            "nothing was spent in this period",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def spend_by_day(ledger: Ledger, *, since: datetime | None = None) -> dict[str, dict[str, Decimal]]:
    """USD per UTC day per provider, by the same rule as `spend` (a task's bill when known,
    else its quote, for every task whose cost counts), grouped by the request's day."""
    from .ledger_reports import _charged, iso, parse_money

    low = iso(since) if since is not None else ""
    out: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    with ledger.reading() as conn:
        rows: list[sqlite3.Row] = list(
            conn.execute(
                "SELECT t.provider, t.state, t.provider_task_id, t.possibly_billed, t.quoted_usd,"
                " t.billed_usd, r.created_at FROM tasks t JOIN requests r ON r.id = t.request_id"
                " WHERE r.created_at >= ?",
                (low,),
            )
        )
    for row in rows:
        # The same rule as `imagerouter spend` (ledger_reports.spend), so the chart agrees.
        if not _charged(row):
            continue
        billed = parse_money(row["billed_usd"])
        amount = billed if billed is not None else Decimal(row["quoted_usd"])
        out[str(row["created_at"])[:10]][str(row["provider"])] += amount
    return {day: dict(providers) for day, providers in out.items()}

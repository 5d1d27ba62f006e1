"""Pricing a batch offline: the routed plan, its total, and the total on each single provider.

Quoting is local (the price tables), so `--dry-run` costs nothing and sends nothing. The plan
is what routing picks first for each line (the first eligible offer); when nothing fails, a
run spends exactly the plan's total. A line no backend can serve is a bad line, reported
before anything is paid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..pricing import quantize
from .parse import BatchFileError, BatchLine, LineProblem

if TYPE_CHECKING:
    from ..offers import Offer
    from ..router import Router

__all__ = ["BatchPlan", "PlannedLine", "plan_batch"]


@dataclass(frozen=True)
class PlannedLine:
    line: BatchLine
    offer: Offer  # what routing tries first
    cost_usd: Decimal


@dataclass(frozen=True)
class BatchPlan:
    lines: tuple[PlannedLine, ...]
    total_usd: Decimal
    # Per provider: the total with every line on that provider alone, and how many lines it
    # cannot serve at all (then its total covers only the others).
    by_provider: dict[str, Decimal] = field(default_factory=dict)
    unserved: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": [
                {
                    "id": planned.line.id,
                    "line": planned.line.number,
                    "provider": planned.offer.provider,
                    "model": planned.offer.model,
                    "cost_usd": str(quantize(planned.cost_usd)),
                }
                for planned in self.lines
            ],
            "total_usd": str(quantize(self.total_usd)),
            "by_provider": {
                name: {
                    "total_usd": str(quantize(total)),
                    "unserved_lines": self.unserved.get(name, 0),
                }
                for name, total in sorted(self.by_provider.items())
            },
        }


def plan_batch(router: Router, lines: Sequence[BatchLine], *, source: str = "") -> BatchPlan:
    """Quote every line; BatchFileError for lines that no backend can serve."""
    planned: list[PlannedLine] = []
    problems: list[LineProblem] = []
    names = sorted(router.catalog.entries)
    by_provider = dict.fromkeys(names, Decimal(0))
    unserved = dict.fromkeys(names, 0)
    for line in lines:
        offers = router.quote_request(line.request)
        eligible = [offer for offer in offers if offer.eligible and offer.total_usd is not None]
        if not eligible:
            reasons = "; ".join(
                f"{offer.provider}/{offer.model}: {offer.reason}" for offer in offers[:4]
            )
            problems.append(
                LineProblem(line.number, f"no backend can serve it ({reasons or 'no offers'})")
            )
            continue
        first = eligible[0]
        assert first.total_usd is not None
        planned.append(PlannedLine(line, first, first.total_usd))
        for name in names:
            mine = [o.total_usd for o in eligible if o.provider == name and o.total_usd is not None]
            if mine:
                by_provider[name] += min(mine)
            else:
                unserved[name] += 1
    if problems:
        raise BatchFileError(source or "requests", problems)
    total = sum((p.cost_usd for p in planned), Decimal(0))
    return BatchPlan(tuple(planned), total, by_provider, unserved)

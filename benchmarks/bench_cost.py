"""Benchmark 5: cost of a mixed workload, routed vs the best single provider and the oracle.

The workload enumerates requests across tiers (none, draft, standard, premium), models,
qualities, sizes (default 1:1 1k, 1536x1024, 1024x1536, 16:9 at 2k, 1:1 at 4k, auto), image
counts (1, 2, 4, 6) and operations (generate; edit with one input image; a masked edit at
n=1): every combination the request validator accepts, each once. Prices are the shipped
price tables (no overrides). For each request:

- routed: the total of the offer the router ranks first (`Router.quote_request`);
- oracle: the cheapest eligible offer in the same quote (the per-request minimum);
- single provider P: P's cheapest eligible offer, on the requests P can serve at all.

No HTTP: this is the routing decision over the price tables.

    python benchmarks/bench_cost.py     # a few seconds
"""

from __future__ import annotations

import io
import itertools
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Table, emit, machine, paste_block
from PIL import Image

from imagerouter import ImageRequest, Router
from imagerouter.config import load_config
from imagerouter.errors import RequestValidationError
from imagerouter.plugins import Plugins
from imagerouter.pricing import quantize

COMMAND = "python benchmarks/bench_cost.py"

SIZES: list[dict[str, Any]] = [
    {},
    {"size": "1536x1024"},
    {"size": "1024x1536"},
    {"aspect_ratio": "16:9", "resolution": "2k"},
    {"aspect_ratio": "1:1", "resolution": "4k"},
    {"size": "auto"},
]


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (64, 64), (200, 30, 30, 255)).save(out, "PNG")
    return out.getvalue()


def workload() -> list[ImageRequest]:
    """Every valid combination, once."""
    image = _png()
    generate: dict[str, Any] = {}
    edit: dict[str, Any] = {"images": [image]}
    masked: dict[str, Any] = {"images": [image], "mask": image}
    choices: list[dict[str, Any]] = []
    for tier in (None, "draft", "standard", "premium"):
        if tier is None:
            for model, quality in itertools.product(
                ("gpt-image-2", "gpt-image-1.5"), (None, "low", "medium", "high")
            ):
                choices.append({"model": model, "quality": quality})
        else:
            choices.append({"tier": tier})
    requests = []
    for choice, size, n in itertools.product(choices, SIZES, (1, 2, 4, 6)):
        # Every generation, every edit, and masked edits of one image.
        for operation in (generate, edit, masked) if n == 1 else (generate, edit):
            try:
                fields = {"prompt": "a lighthouse", "n": n, **choice, **size, **operation}
                requests.append(ImageRequest.build(**fields))
            except RequestValidationError:
                continue
    return requests


def main() -> None:
    emit(f"machine: {machine()}")
    plugins = Plugins.load()
    router = Router(
        load_config(None, known_providers=plugins.providers()), plugins=plugins, ledger=False
    )
    providers = sorted(router.catalog.entries)
    requests = workload()
    routed = oracle = Decimal(0)
    served = 0
    unservable = 0
    worse = 0
    kinds: Counter[str] = Counter()
    single: dict[str, Decimal] = dict.fromkeys(providers, Decimal(0))
    routed_on: dict[str, Decimal] = dict.fromkeys(providers, Decimal(0))
    covered: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for request in requests:
        kinds[request.operation] += 1
        try:
            offers = router.quote_request(request)
        except Exception as exc:  # reported, not hidden: a quote must never raise here
            errors[f"{type(exc).__name__}: {str(exc).split(', not ')[0][:80]}"] += 1
            continue
        eligible = [o for o in offers if o.eligible and o.total_usd is not None]
        if not eligible:
            unservable += 1
            continue
        served += 1
        first = eligible[0].total_usd
        best = min(o.total_usd for o in eligible if o.total_usd is not None)
        assert first is not None
        routed += first
        oracle += best
        worse += first > best
        for name in providers:
            mine = [o.total_usd for o in eligible if o.provider == name and o.total_usd]
            if mine:
                covered[name] += 1
                single[name] += min(mine)
                routed_on[name] += first
    rows = [
        ["routed (imagerouter)", str(served), f"{quantize(routed)}", "1.000", ""],
        [
            "oracle (cheapest eligible offer per request)",
            str(served),
            f"{quantize(oracle)}",
            f"{routed / oracle:.3f}",
            "target: routed = oracle " + ("(met)" if routed == oracle else "(NOT met)"),
        ],
    ]
    for name in providers:
        ratio = routed_on[name] / single[name] if single[name] else Decimal(0)
        rows.append(
            [
                f"only {name}",
                f"{covered[name]} of {served}",
                f"{quantize(single[name])}",
                f"{ratio:.3f}",
                f"routed on the same requests: {quantize(routed_on[name])}",
            ]
        )
    table = Table(
        ["strategy", "requests served", "total USD", "routed / this", "note"],
        rows,
    )
    emit()
    emit(table.render())
    for error, count in errors.items():
        emit(f"quote raised on {count} requests: {error}")
    notes = [
        f"Workload: {len(requests)} requests ({kinds['generate']} generations, "
        f"{kinds['edit']} edits; tiers, models, qualities, 6 sizes, n in 1/2/4/6); "
        f"{unservable} have no eligible offer on either provider and are left out. The routed "
        f"choice cost more than the oracle on {worse} requests. A single provider is compared "
        "on the requests it can serve (`routed / this` < 1 means routing saves money there).",
    ]
    notes += [
        f"Quoting raised on {count} requests (left out above): `{error}`"
        for error, count in errors.items()
    ]
    emit()
    emit("---- paste into docs/performance.md ----")
    emit(paste_block("5. Cost over a mixed workload", COMMAND, table, notes))


if __name__ == "__main__":
    main()

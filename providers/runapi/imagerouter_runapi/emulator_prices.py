"""The RunAPI emulator's `GET /api/v1/price_schedules`, served from the table it bills by.

The schedules are built from the emulator's own price table on every request, so a test that
changes the emulated price (`set_emulated_prices`) sees the change both in the schedules
`imagerouter prices refresh` reads and in what the emulator then bills. Shape as in
price_schedules.py: a flat `unit_price_cents` where the table has one price, else
`billing_config: {param, unit_price_cents: {value: cents}}` (our inference of RunAPI's
undocumented per-option form). Public like RunAPI's (no key needed), with an `ETag` and 304
for a matching `If-None-Match`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagerouter.emulation import EmulatorApp
from imagerouter.pricing import PriceTable

from .price_schedules import PATH
from .wire import ACTIONS, SERVICES

__all__ = ["price_routes", "price_schedules_body", "set_emulated_prices"]

# The request parameter each model's prices vary by (what its shipped table nests under).
_PARAM = {"gpt-image-2": "output_resolution", "gpt-image-1.5": "quality"}
AS_OF = "2026-08-21T00:00:00.000000Z"


def price_routes(prices: Callable[[], PriceTable]) -> list[Route]:
    """The route, reading the emulator's current table through `prices`."""

    async def schedules(request: Request) -> Response:
        body = price_schedules_body(prices())
        text = json.dumps(body, sort_keys=True)
        etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return JSONResponse(body, headers={"ETag": etag})

    return [Route(PATH, schedules, methods=["GET"])]


def price_schedules_body(table: PriceTable) -> dict[str, Any]:
    schedules = []
    for model, service in SERVICES.items():
        for operation, action in ACTIONS.items():
            node = table.prices.get(model, {}).get(operation)
            if node is None:
                continue
            schedules.append(_schedule(service, action, model, node))
    return {"as_of": AS_OF, "price_schedules": schedules}


def _schedule(service: str, action: str, model: str, node: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "service": service,
        "action": action,
        "model": model,
        "pricing_status": "available",
        "catalog_status": "active",
        "currency": "USD",
        "billing_unit": "per_call",
    }
    if isinstance(node, Decimal) or (isinstance(node, Mapping) and set(node) == {"*"}):
        flat = node if isinstance(node, Decimal) else node["*"]
        return {
            **item,
            "billing_strategy": "flat",
            "unit_price_cents": _cents(flat),
            "billing_config": {},
        }
    options = {str(k): _cents(v) for k, v in node.items() if k != "*"}
    return {
        **item,
        "billing_strategy": "by_param",
        "unit_price_cents": min(options.values()),
        "billing_config": {"param": _PARAM.get(model, "option"), "unit_price_cents": options},
    }


def _cents(usd: Decimal) -> int | float:
    cents = usd * 100
    return int(cents) if cents == cents.to_integral_value() else float(cents)


def set_emulated_prices(app: EmulatorApp, prices: Mapping[str, Any]) -> PriceTable:
    """Change what the running RunAPI emulator charges and publishes (a test's "RunAPI changed
    its price"): `prices` is merged leaf by leaf into its current table."""
    state = app.app.state.emulator  # the EmulatorState build_emulator keeps on the app
    table: PriceTable = state.prices.with_overrides(prices)
    state.prices = table
    return table

"""RunAPI's live price schedules (`GET /api/v1/price_schedules`) as an imagerouter price tree.

The endpoint is the one RunAPI's official SDKs call (`runapi.core.Pricing.list_schedules`):
free, auth optional, `ETag` / `If-None-Match` with 304. Its answer is
`{as_of, price_schedules: [{service, action, model, pricing_status, catalog_status, currency,
billing_unit, billing_strategy, unit_price_cents, ..., billing_config}]}`.

How a schedule prices by a request parameter (gpt-image-2's `output_resolution`) is not
documented: the SDKs type `billing_config` as an opaque object. **Inference**, read
defensively: a `billing_config` naming a parameter and cents per value
(`{"param": "output_resolution", "unit_price_cents": {"1k": 6, "2k": 10, "4k": 16}}`) prices
by that value; otherwise `unit_price_cents` is one flat price for every value. Schedules that
are not per-call USD prices of a model this plugin serves, or not `available`, are skipped
and named in the report. No key is sent: the prices are public, and a key sent nowhere it is
not needed cannot leak there.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from imagerouter.live_prices import FetchedPrices
from imagerouter.pricing import PriceTable

from .wire import ACTIONS, SERVICES

__all__ = ["PATH", "fetch_price_schedules", "parse_price_schedules"]

PATH = "/api/v1/price_schedules"
_PER_CALL = {"per_call", "per_image", "call", "image", ""}
_OPTION_KEYS = ("unit_price_cents", "prices_cents", "option_prices_cents", "prices")
_HUNDRED = Decimal(100)


async def fetch_price_schedules(
    base_url: str,
    http: httpx.AsyncClient,
    shipped: PriceTable,
    *,
    timeout_s: float = 30.0,
    etag: str | None = None,
) -> FetchedPrices:
    """One GET of the schedules; raises ValueError naming what was wrong with the answer."""
    url = f"{base_url.rstrip('/')}{PATH}"
    headers = {"Accept": "application/json", "User-Agent": "imagerouter-runapi"}
    if etag:
        headers["If-None-Match"] = etag
    response = await http.get(url, headers=headers, timeout=timeout_s)
    new_etag = response.headers.get("etag")
    if response.status_code == 304:
        return FetchedPrices(prices={}, source=url, etag=new_etag or etag, not_modified=True)
    if response.status_code != 200:
        raise ValueError(f"GET {url} answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise ValueError(f"GET {url} answered something that is not JSON") from None
    prices, skipped = parse_price_schedules(body, shipped)
    as_of = body.get("as_of") if isinstance(body, Mapping) else None
    return FetchedPrices(
        prices=prices,
        source=url,
        as_of=str(as_of or ""),
        etag=new_etag,
        skipped=tuple(skipped),
    )


def parse_price_schedules(body: Any, shipped: PriceTable) -> tuple[dict[str, Any], list[str]]:
    """(price tree in the shipped table's shape, skipped schedules with the reason)."""
    if not isinstance(body, Mapping) or not isinstance(body.get("price_schedules"), list):
        raise ValueError("the answer has no 'price_schedules' list")
    models = {service: model for model, service in SERVICES.items()}
    operations = {action: operation for operation, action in ACTIONS.items()}
    tree: dict[str, Any] = {}
    skipped: list[str] = []
    for item in body["price_schedules"]:
        if not isinstance(item, Mapping):
            skipped.append("a schedule that is not an object")
            continue
        service, action = str(item.get("service", "")), str(item.get("action", ""))
        model = models.get(service)
        operation = operations.get(action)
        if model is None or operation is None:
            continue  # another RunAPI model: not ours to price
        label = f"{service}/{action}"
        if item.get("model") not in (None, "", model):
            skipped.append(f"{label}: model {item.get('model')!r} is not {model!r}")
            continue
        reason = _unusable(item)
        if reason:
            skipped.append(f"{label}: {reason}")
            continue
        try:
            prices = _prices(item, shipped, model, operation)
        except ValueError as exc:
            skipped.append(f"{label}: {exc}")
            continue
        tree.setdefault(model, {})[operation] = prices
    return tree, skipped


def _unusable(item: Mapping[str, Any]) -> str | None:
    if item.get("pricing_status") != "available":
        return f"pricing_status is {item.get('pricing_status')!r}, not 'available'"
    if item.get("catalog_status") not in (None, "active"):
        return f"catalog_status is {item.get('catalog_status')!r}"
    if item.get("currency") != "USD":
        return f"currency is {item.get('currency')!r}, not USD"
    if str(item.get("billing_unit") or "") not in _PER_CALL:
        return f"billing_unit {item.get('billing_unit')!r} is not a price per call"
    return None


def _prices(
    item: Mapping[str, Any], shipped: PriceTable, model: str, operation: str
) -> dict[str, Decimal]:
    """`{value: USD}` by the parameter `billing_config` names, or one flat price."""
    config = item.get("billing_config")
    if isinstance(config, Mapping):
        for key in _OPTION_KEYS:
            options = config.get(key)
            if isinstance(options, Mapping) and options:
                return {str(value): _usd(cents) for value, cents in options.items()}
    flat = item.get("unit_price_cents")
    if flat is None:
        raise ValueError("neither unit_price_cents nor per-option prices")
    price = _usd(flat)
    # A flat schedule is one price whatever the parameters: it replaces every value the
    # shipped table distinguishes (e.g. each output resolution), not only a "*" entry.
    known = shipped.prices.get(model, {}).get(operation, {})
    named = [str(key) for key in known] if isinstance(known, Mapping) else []
    return {key: price for key in sorted({*named, "*"})}


def _usd(cents: Any) -> Decimal:
    if isinstance(cents, bool) or not isinstance(cents, int | float | str | Decimal):
        raise ValueError(f"{cents!r} is not an amount in cents")
    try:
        amount = Decimal(str(cents))
    except InvalidOperation:
        raise ValueError(f"{cents!r} is not an amount in cents") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{cents!r} is not a non-negative amount in cents")
    return amount / _HUNDRED

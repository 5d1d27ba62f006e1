"""Price tables as data.

Each provider plugin ships a YAML price table:

```yaml
provider: runflow
currency: USD
source: https://www.runflow.io/models/openai/gpt-image-1.5
read_on: 2026-08-20
notes: why a conflicting figure was not chosen
prices:                  # model -> operation -> the provider's own dimensions -> USD per image
  gpt-image-1.5:
    generate:
      low: {1024x1024: "0.009", 1024x1536: "0.013", 1536x1024: "0.013"}
```

The nesting below `operation` belongs to the provider (RunAPI prices by resolution class,
Runflow by quality and size); `"*"` matches any value. A user's config overrides any leaf with
the same shape (`providers.<name>.prices`), merged key by key. All amounts are `Decimal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

import yaml

__all__ = ["PriceTable", "PriceTree", "money"]

PriceTree = Mapping[str, Any]  # nested str -> (PriceTree | Decimal)

_CENT = Decimal("0.000001")


def money(value: Any) -> Decimal:
    """A non-negative USD amount as Decimal. Floats go through str() so 0.1 stays 0.1."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an amount")
    if isinstance(value, float):
        value = str(value)
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f"{value!r} is not an amount in USD") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{value!r} is not a non-negative amount in USD")
    return amount


@dataclass(frozen=True)
class PriceTable:
    """One provider's prices: `lookup(model, operation, *dims)` gives USD per image."""

    provider: str
    prices: PriceTree
    currency: str = "USD"
    source: str = ""
    read_on: str = ""
    notes: str = ""
    overridden: tuple[str, ...] = field(default=())
    # Leaves replaced by a live price (`imagerouter prices refresh`, imagerouter.live_prices),
    # and when that price was fetched; the user's overrides still win over them.
    live: tuple[str, ...] = field(default=())
    live_on: str = ""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PriceTable:
        prices = data.get("prices")
        if not isinstance(prices, Mapping):
            raise ValueError("a price table needs a 'prices' mapping")
        return cls(
            provider=str(data.get("provider", "")),
            prices=_normalize(prices, "prices"),
            currency=str(data.get("currency", "USD")),
            source=str(data.get("source", "")),
            read_on=str(data.get("read_on", "")),
            notes=str(data.get("notes", "")).strip(),
        )

    @classmethod
    def from_package(cls, package: str, name: str = "prices.yaml") -> PriceTable:
        """Load the table a plugin ships as package data."""
        text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
        return cls.from_mapping(yaml.safe_load(text))

    def lookup(self, model: str, operation: str, *dims: str) -> Decimal | None:
        """USD per image for this model, operation and provider dimensions, or None."""
        node: Any = self.prices
        for key in (model, operation, *dims):
            if isinstance(node, Decimal):
                return node
            if not isinstance(node, Mapping):
                return None
            node = node.get(key, node.get("*"))
            if node is None:
                return None
        # Dimensions the caller did not name match a "*" entry.
        while isinstance(node, Mapping) and "*" in node:
            node = node["*"]
        return node if isinstance(node, Decimal) else None

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> PriceTable:
        """A copy with a user's overrides merged in (leaf by leaf)."""
        if not overrides:
            return self
        normalized = _normalize(overrides, "prices")
        merged = _merge(self.prices, normalized)
        paths = tuple(_leaf_paths(normalized))
        return PriceTable(
            provider=self.provider,
            prices=merged,
            currency=self.currency,
            source=self.source,
            read_on=self.read_on,
            notes=self.notes,
            overridden=self.overridden + paths,
            live=self.live,
            live_on=self.live_on,
        )

    def with_live(self, live: Mapping[str, Any], fetched_on: str) -> PriceTable:
        """A copy with live prices (same shape as `prices`) merged in, leaf by leaf."""
        if not live:
            return self
        normalized = _normalize(live, "prices")
        return PriceTable(
            provider=self.provider,
            prices=_merge(self.prices, normalized),
            currency=self.currency,
            source=self.source,
            read_on=self.read_on,
            notes=self.notes,
            overridden=self.overridden,
            live=self.live + tuple(_leaf_paths(normalized)),
            live_on=fetched_on,
        )

    def rows(self) -> list[tuple[str, Decimal]]:
        """Every leaf as ('model.operation.dim...', price), for `imagerouter prices`."""
        return [(path, value) for path, value in _leaves(self.prices)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "currency": self.currency,
            "source": self.source,
            "read_on": self.read_on,
            "notes": self.notes,
            "overridden": list(self.overridden),
            "live": list(self.live),
            "live_on": self.live_on,
            "prices": _jsonable(self.prices),
        }


def _normalize(node: Any, path: str) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _normalize(v, f"{path}.{k}") for k, v in node.items()}
    try:
        return money(node)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return override


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Decimal]]:
    if isinstance(node, Mapping):
        out: list[tuple[str, Decimal]] = []
        for key, value in node.items():
            out.extend(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return [(prefix, node)]


def _leaf_paths(node: Any) -> list[str]:
    return [path for path, _ in _leaves(node)]


def _jsonable(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _jsonable(v) for k, v in node.items()}
    return str(node)


def quantize(amount: Decimal) -> Decimal:
    """Round to a millionth of a dollar for display and storage."""
    return amount.quantize(_CENT).normalize() if amount else Decimal(0)

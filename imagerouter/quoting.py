"""Quoting: every backend's offer for one request, filtered and ranked. No I/O.

A `Catalog` is built once per Router: the registered providers with their effective price
and capability tables (the plugin's data merged with the user's overrides). `quote()` asks each
provider (or each variant of the request's tier) for offers, marks the ones the request's
limits rule out, and ranks them: eligible first, then by the routing strategy, then a
deterministic tie-break, so the same request always ranks the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from .errors import RequestValidationError
from .offers import Offer
from .pricing import PriceTable, quantize

if TYPE_CHECKING:
    from .config import Config
    from .provider import Provider, ProviderSettings
    from .request import ImageRequest

__all__ = ["Catalog", "Strategy", "quote", "rank"]

log = logging.getLogger("imagerouter.quoting")

Strategy = Literal["cheapest", "priority", "fastest"]
# (provider, model, operation) -> a latency estimate in seconds (None when unknown)
LatencyOf = Callable[[tuple[str, str, str]], float | None]


@dataclass(frozen=True)
class Entry:
    provider: Provider
    settings: ProviderSettings
    prices: PriceTable
    capabilities: Mapping[str, Any]


@dataclass(frozen=True)
class Catalog:
    """The providers a Router can use, with their effective data."""

    entries: Mapping[str, Entry]
    order: tuple[str, ...]  # config order, for the `priority` strategy without tiers

    @classmethod
    def build(cls, providers: Mapping[str, Provider], config: Config) -> Catalog:
        entries: dict[str, Entry] = {}
        for name, provider in providers.items():
            settings = config.provider_settings(name)
            prices = provider.price_table().with_overrides(settings.prices)
            capabilities = {**provider.capabilities(), **settings.capabilities}
            entries[name] = Entry(provider, settings, prices, capabilities)
        configured = [name for name in config.providers if name in entries]
        rest = sorted(name for name in entries if name not in configured)
        return cls(entries=entries, order=(*configured, *rest))

    def provider(self, name: str) -> Provider:
        return self.entries[name].provider


def quote(
    catalog: Catalog,
    request: ImageRequest,
    config: Config,
    *,
    latency_of: LatencyOf | None = None,
) -> list[Offer]:
    """Every offer for `request` (eligible or not, with reasons), ranked best first."""
    tier_name = request.tier or config.default_tier
    if tier_name is not None and tier_name not in config.tiers:
        known = ", ".join(sorted(config.tiers)) or "none are configured"
        raise RequestValidationError("tier", f"{tier_name!r} is not a tier; tiers: {known}")
    offers: list[Offer] = []
    if tier_name is None:
        for name in catalog.order:
            offers.extend(_offers_from(catalog, name, request, None, None))
    else:
        for index, variant in enumerate(config.tiers[tier_name]):
            overrides = variant.model_dump(exclude={"provider"}, exclude_none=True)
            try:
                effective = request.with_overrides(**overrides)
            except RequestValidationError as exc:
                offers.append(
                    Offer.ineligible(variant.provider, request, f"tier variant: {exc}").in_tier(
                        tier_name, index
                    )
                )
                continue
            offers.extend(_offers_from(catalog, variant.provider, effective, tier_name, index))
    offers = [_apply_limits(offer, request) for offer in offers]
    return rank(offers, config.routing.strategy, latency_of=latency_of)


def _offers_from(
    catalog: Catalog,
    name: str,
    request: ImageRequest,
    tier: str | None,
    variant: int | None,
) -> list[Offer]:
    entry = catalog.entries.get(name)
    if entry is None:
        return [Offer.ineligible(name, request, "no such provider is installed")]
    if not entry.settings.enabled:
        made = [Offer.ineligible(name, request, "disabled in the config")]
    elif request.providers is not None and name not in request.providers:
        made = [Offer.ineligible(name, request, "not in the request's providers allow-list")]
    else:
        try:
            made = entry.provider.offers(
                request, prices=entry.prices, capabilities=entry.capabilities
            )
        except Exception as exc:  # a broken plugin must not break quoting for the others
            log.exception("provider %s failed to make offers", name)
            made = [Offer.ineligible(name, request, f"plugin error: {type(exc).__name__}: {exc}")]
    return [offer.in_tier(tier, variant) for offer in made]


def _apply_limits(offer: Offer, request: ImageRequest) -> Offer:
    limit = request.max_cost_usd
    total = offer.total_usd
    if offer.eligible and limit is not None and total is not None and total > limit:
        reason = f"costs {quantize(total)} USD, above max_cost_usd {limit}"
        return replace(offer, eligible=False, reason=reason)
    return offer


def rank(
    offers: Sequence[Offer],
    strategy: Strategy = "cheapest",
    *,
    latency_of: LatencyOf | None = None,
) -> list[Offer]:
    """Eligible first; then by strategy; ties broken by price, latency, then names."""
    unknown = Decimal("Infinity")

    def price(offer: Offer) -> Decimal:
        return offer.total_usd if offer.total_usd is not None else unknown

    def latency(offer: Offer) -> float:
        if latency_of is None:
            return float("inf")
        value = latency_of(offer.backend)
        return float("inf") if value is None else value

    def position(offer: Offer) -> int:
        return offer.variant if offer.variant is not None else 0

    def key(offer: Offer) -> tuple[Any, ...]:
        # On equal price and latency, the tier's own order decides, then names.
        tail = (position(offer), offer.provider, offer.model)
        if strategy == "priority":
            # Stable sort: offers arrive in tier-variant order, or in config order without a
            # tier, and that order is the priority.
            return (not offer.eligible, position(offer))
        if strategy == "fastest":
            return (not offer.eligible, latency(offer), price(offer), *tail)
        return (not offer.eligible, price(offer), latency(offer), *tail)

    return sorted(offers, key=key)

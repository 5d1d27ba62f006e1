"""Quoting: every backend's offer for one request, filtered and ranked. No I/O.

A `Catalog` is built once per Router: the registered providers with their effective price
and capability tables (the plugin's data merged with the user's overrides). `quote()` asks each
provider (or each variant of the request's tier) for offers, marks the ones the request's
limits rule out, and ranks them: eligible first, then by the routing strategy, then a
deterministic tie-break, so the same request always ranks the same way.

Quoting is on every request's path (and is repeated on each failover), so the offers for a
request *shape* are memoized per Catalog and config: every field but the prompt, plus each
provider's `prompt_key(prompt)` (what of the prompt its pure `offers()` depends on, e.g.
whether its length is allowed). Only the ranking, which reads live health data, runs every
time. benchmarks/bench_route_decision.py measures it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from .errors import MissingApiKeyError, RequestValidationError
from .geometry import size_verdict
from .live_prices import base_table
from .offers import Offer
from .pricing import PriceTable, quantize

if TYPE_CHECKING:
    from .config import Config
    from .provider import Provider, ProviderSettings
    from .request import ImageRequest

__all__ = ["Catalog", "Strategy", "quote", "rank", "with_size_policy"]

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
class _Quoted:
    """A memoized quote: the first request of its shape, its unranked offers, and their order
    when latency does not matter (it only breaks ties in `cheapest`, within `ties`)."""

    first: ImageRequest
    offers: tuple[Offer, ...]
    order: tuple[int, ...] | None  # None: the strategy needs a full ranking every time
    ties: tuple[int, ...]  # offers whose order may depend on latency
    clean: bool = True  # every provider answered without raising


class _Memo:
    """Quotes by request shape, for one config at a time. Bounded: when full it is simply
    emptied (shapes are few in practice; this only guards against unbounded growth)."""

    LIMIT = 1024

    def __init__(self) -> None:
        self.config: Config | None = None
        self.quotes: dict[tuple[Any, ...], _Quoted] = {}


@dataclass(frozen=True)
class Catalog:
    """The providers a Router can use, with their effective data."""

    entries: Mapping[str, Entry]
    order: tuple[str, ...]  # config order, for the `priority` strategy without tiers
    memo: _Memo = field(default_factory=_Memo, init=False, repr=False, compare=False)

    @classmethod
    def build(cls, providers: Mapping[str, Provider], config: Config) -> Catalog:
        entries: dict[str, Entry] = {}
        for name, provider in providers.items():
            settings = config.provider_settings(name)
            # Shipped table + the newest live snapshot (live_prices.py), then the user's.
            prices = base_table(provider, config).with_overrides(settings.prices)
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
    strategy = config.routing.strategy
    request = with_size_policy(request, config)
    if request.images or request.mask is not None:
        # Edits are not memoized: their shape would pin the input images in memory.
        offers, _ = _quote_offers(catalog, request, config, tier_name)
        return rank(offers, strategy, latency_of=latency_of)
    memo = _memo(catalog, config)
    key = _shape(catalog, request)
    quoted = memo.quotes.get(key)
    if quoted is None:
        quoted = _quote_shape(catalog, request, config, tier_name)
        if quoted.clean:  # a plugin error is not memoized: it is logged and retried each time
            if len(memo.quotes) >= _Memo.LIMIT:
                memo.quotes.clear()
            memo.quotes[key] = quoted
    elif quoted.first.prompt != request.prompt:
        # Kept for the new prompt: the router quotes a request more than once (to start,
        # and again on each failover), and those repeats are then served as they are.
        quoted = replace(
            quoted, first=request, offers=_with_prompt(quoted.offers, quoted.first, request)
        )
        memo.quotes[key] = quoted
    offers = list(quoted.offers)
    if quoted.order is None:
        return rank(offers, strategy, latency_of=latency_of)
    if latency_of is not None and quoted.ties:
        latencies = _latencies(offers, quoted.ties, latency_of)
        if len(set(latencies.values())) > 1:
            return _sorted(offers, strategy, latencies)
    return [offers[index] for index in quoted.order]


def with_size_policy(request: ImageRequest, config: Config) -> ImageRequest:
    """`request` with its size policy resolved (the config's `routing.size_policy` when it
    names none), so a provider's `offers()` always sees the policy that applies."""
    if request.size_policy is not None or request.size in (None, "auto"):
        return request  # a ratio, a class or auto promises no pixels: no policy applies
    # As in _reprompted: a copy with one field set, without re-running validation.
    copy = request.__copy__()
    copy.__dict__["size_policy"] = config.routing.size_policy
    return copy


def _memo(catalog: Catalog, config: Config) -> _Memo:
    memo = catalog.memo
    if memo.config is not config:  # a Router's config is frozen; a new one starts afresh
        memo.config = config
        memo.quotes = {}
    return memo


def _quote_shape(
    catalog: Catalog, request: ImageRequest, config: Config, tier_name: str | None
) -> _Quoted:
    offers, clean = _quote_offers(catalog, request, config, tier_name)
    strategy = config.routing.strategy
    order: tuple[int, ...] | None = None
    ties: tuple[int, ...] = ()
    if strategy != "fastest":
        # Latency decides only among `ties`; when those are equal, this order stands.
        ties = _ties(offers) if strategy == "cheapest" else ()
        order = tuple(_order(offers, strategy, {}))
    return _Quoted(request, tuple(offers), order, ties, clean)


def _shape(catalog: Catalog, request: ImageRequest) -> tuple[Any, ...]:
    """Every field but the prompt, in field order, then what each provider reads of it."""
    fields = tuple(value for name, value in request.__dict__.items() if name != "prompt")
    prompt = request.prompt
    keys = tuple(
        entry.provider.prompt_key(prompt, entry.capabilities) for entry in catalog.entries.values()
    )
    return (*fields, keys)


def _with_prompt(
    offers: Sequence[Offer], first: ImageRequest, request: ImageRequest
) -> tuple[Offer, ...]:
    """Offers memoized for `first` re-attached to `request` (same shape, another prompt): each
    tier variant's effective request is rebuilt with the new prompt, exactly as quoting afresh
    would have made it (a variant overrides other fields, never the prompt)."""
    rebuilt: dict[int, ImageRequest] = {id(first): request}
    out = []
    for offer in offers:
        old = offer.request
        new: ImageRequest | None = None
        if old is not None:
            new = rebuilt.get(id(old))
            if new is None:
                new = _reprompted(old, request.prompt)
                rebuilt[id(old)] = new
        out.append(_with_request(offer, new))
    return tuple(out)


def _reprompted(request: ImageRequest, prompt: str) -> ImageRequest:
    # What `model_copy(update={"prompt": prompt})` does (the prompt is a required field, so
    # it is already in the fields set), without its generic update handling: this runs once
    # per tier variant on every warm quote.
    copy = request.__copy__()
    copy.__dict__["prompt"] = prompt
    return copy


def _with_request(offer: Offer, request: ImageRequest | None) -> Offer:
    # dataclasses.replace re-runs __init__ over every field; a copy of the frozen dataclass
    # with one field swapped is all this needs, and is several times cheaper on a hot path.
    copy = object.__new__(Offer)
    copy.__dict__.update(offer.__dict__)
    copy.__dict__["request"] = request
    return copy


def _quote_offers(
    catalog: Catalog, request: ImageRequest, config: Config, tier_name: str | None
) -> tuple[list[Offer], bool]:
    """Unranked offers for `request`, and whether every provider answered without error."""
    offers: list[Offer] = []
    clean = True
    if tier_name is None:
        for name in catalog.order:
            made, ok = _offers_from(catalog, name, request, None, None)
            offers.extend(made)
            clean = clean and ok
    else:
        for index, variant in enumerate(config.tiers[tier_name]):
            overrides = variant.model_dump(exclude={"provider"}, exclude_none=True)
            try:
                # A variant's own `size` needs the policy as much as a request's does.
                effective = with_size_policy(request.with_overrides(**overrides), config)
            except RequestValidationError as exc:
                offers.append(
                    Offer.ineligible(variant.provider, request, f"tier variant: {exc}").in_tier(
                        tier_name, index
                    )
                )
                continue
            made, ok = _offers_from(catalog, variant.provider, effective, tier_name, index)
            offers.extend(made)
            clean = clean and ok
    return [_apply_limits(offer, request) for offer in offers], clean


def _offers_from(
    catalog: Catalog,
    name: str,
    request: ImageRequest,
    tier: str | None,
    variant: int | None,
) -> tuple[list[Offer], bool]:
    entry = catalog.entries.get(name)
    if entry is None:
        return [Offer.ineligible(name, request, "no such provider is installed")], True
    ok = True
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
            ok = False
        if entry.provider.needs_key_to_route and not _has_key(entry):
            # Off until its key is set (or under --emulate); still priced, so a quote shows
            # what it would cost.
            off = f"off until {entry.provider.key_env_var} is set"
            made = [
                replace(offer, eligible=False, reason=offer.reason or off)
                if offer.eligible
                else offer
                for offer in made
            ]
    return [offer.in_tier(tier, variant) for offer in made], ok


def _has_key(entry: Entry) -> bool:
    try:
        entry.settings.resolve_api_key(entry.provider)
    except MissingApiKeyError:
        return False
    return True


def _apply_limits(offer: Offer, request: ImageRequest) -> Offer:
    offer = _apply_size_policy(offer)
    limit = request.max_cost_usd
    total = offer.total_usd
    if offer.eligible and limit is not None and total is not None and total > limit:
        reason = f"costs {quantize(total)} USD, above max_cost_usd {limit}"
        return replace(offer, eligible=False, reason=reason)
    return offer


def _apply_size_policy(offer: Offer) -> Offer:
    """Under the request's size policy, whether the pixels this offer delivers serve the WxH
    asked for (a tier variant's own size counts: `offer.request` is the effective request)."""
    effective = offer.request
    if not offer.eligible or effective is None or effective.size_policy is None:
        return offer
    geometry = effective.geometry
    if geometry.kind != "pixels":
        return offer  # a ratio at a class, or auto: no pixel size was promised
    assert geometry.width is not None and geometry.height is not None
    wanted = (geometry.width, geometry.height)
    eligible, resize_to, why = size_verdict(effective.size_policy, wanted, offer.delivered_size)
    if not eligible:
        return replace(offer, eligible=False, reason=why)
    if resize_to == offer.resize_to and why is None:
        return offer
    notes = (*offer.notes, why) if why else offer.notes
    return replace(offer, resize_to=resize_to, notes=notes)


def rank(
    offers: Sequence[Offer],
    strategy: Strategy = "cheapest",
    *,
    latency_of: LatencyOf | None = None,
) -> list[Offer]:
    """Eligible first; then by strategy; ties broken by price, latency, then names."""
    if strategy == "priority" or latency_of is None:
        return _sorted(offers, strategy, {})
    wanted = range(len(offers)) if strategy == "fastest" else _ties(offers)
    return _sorted(offers, strategy, _latencies(offers, wanted, latency_of))


_UNKNOWN_PRICE = Decimal("Infinity")
_UNKNOWN_LATENCY = float("inf")


def _price(offer: Offer) -> Decimal:
    return offer.total_usd if offer.total_usd is not None else _UNKNOWN_PRICE


def _position(offer: Offer) -> int:
    return offer.variant if offer.variant is not None else 0


def _ties(offers: Sequence[Offer]) -> tuple[int, ...]:
    """Offers that tie with another on eligibility and price: under `cheapest`, latency can
    change their order and nobody else's. A latency lookup reads live health data and is the
    costly part of ranking, so it is made only for these."""
    groups: dict[tuple[bool, Decimal], list[int]] = {}
    for index, offer in enumerate(offers):
        groups.setdefault((offer.eligible, _price(offer)), []).append(index)
    return tuple(index for group in groups.values() if len(group) > 1 for index in group)


def _latencies(
    offers: Sequence[Offer], wanted: Iterable[int], latency_of: LatencyOf
) -> dict[int, float]:
    latencies = {}
    for index in wanted:
        value = latency_of(offers[index].backend)
        latencies[index] = _UNKNOWN_LATENCY if value is None else value
    return latencies


def _order(
    offers: Sequence[Offer], strategy: Strategy, latencies: Mapping[int, float]
) -> list[int]:
    """Indices of `offers` in rank order; `latencies` by index (unknown when missing)."""

    def key(index: int) -> tuple[Any, ...]:
        offer = offers[index]
        if strategy == "priority":
            # Stable sort: offers arrive in tier-variant order, or in config order without a
            # tier, and that order is the priority.
            return (not offer.eligible, _position(offer))
        latency = latencies.get(index, _UNKNOWN_LATENCY)
        # On equal price and latency, the tier's own order decides, then names.
        tail = (_position(offer), offer.provider, offer.model)
        if strategy == "fastest":
            return (not offer.eligible, latency, _price(offer), *tail)
        return (not offer.eligible, _price(offer), latency, *tail)

    return sorted(range(len(offers)), key=key)


def _sorted(
    offers: Sequence[Offer], strategy: Strategy, latencies: Mapping[int, float]
) -> list[Offer]:
    return [offers[index] for index in _order(offers, strategy, latencies)]

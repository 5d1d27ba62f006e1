"""Ranking: eligible first, then the strategy, then a deterministic tie-break."""

from __future__ import annotations

from decimal import Decimal

from imagerouter import ImageRequest, Offer, Router
from imagerouter.config import load_config
from imagerouter.plugins import Plugins
from imagerouter.quoting import rank

REQUEST = ImageRequest.build(prompt="a cat")


def offer(provider: str, total: str | None, *, eligible: bool = True, variant: int = 0) -> Offer:
    per = None if total is None else Decimal(total)
    return Offer(
        provider=provider,
        model="gpt-image-2",
        operation="generate",
        eligible=eligible,
        batches=(1,),
        per_image_usd=per,
        total_usd=per,
        variant=variant,
    )


def test_cheapest_puts_eligible_first_then_price() -> None:
    offers = [offer("a", "0.10"), offer("b", "0.01", eligible=False), offer("c", "0.05")]
    assert [o.provider for o in rank(offers, "cheapest")] == ["c", "a", "b"]


def test_ties_break_on_latency_then_tier_order_then_name() -> None:
    offers = [offer("b", "0.05", variant=1), offer("a", "0.05", variant=2)]
    assert [o.provider for o in rank(offers)] == ["b", "a"]
    latency = {("a", "gpt-image-2", "generate"): 1.0, ("b", "gpt-image-2", "generate"): 9.0}
    assert [o.provider for o in rank(offers, latency_of=latency.get)] == ["a", "b"]


def test_priority_keeps_the_given_order_and_fastest_uses_latency() -> None:
    offers = [offer("slow", "0.01", variant=0), offer("fast", "0.50", variant=1)]
    assert [o.provider for o in rank(offers, "priority")] == ["slow", "fast"]
    latency = {("slow", "gpt-image-2", "generate"): 20.0, ("fast", "gpt-image-2", "generate"): 2.0}
    assert [o.provider for o in rank(offers, "fastest", latency_of=latency.get)] == ["fast", "slow"]


def test_ranking_is_deterministic_for_the_shipped_providers() -> None:
    plugins = Plugins.load()
    router = Router(
        load_config({}, known_providers=plugins.providers()), plugins=plugins, ledger=False
    )
    first = [o.to_dict() for o in router.quote("x", quality="medium", n=3)]
    for _ in range(5):
        assert [o.to_dict() for o in router.quote("x", quality="medium", n=3)] == first


def test_disabled_provider_and_unknown_tier() -> None:
    plugins = Plugins.load()
    config = load_config(
        {"providers": {"runapi": {"enabled": False}}}, known_providers=plugins.providers()
    )
    router = Router(config, plugins=plugins, ledger=False)
    runapi = next(o for o in router.quote("x") if o.provider == "runapi")
    assert not runapi.eligible and runapi.reason == "disabled in the config"
    import pytest

    from imagerouter import RequestValidationError

    with pytest.raises(RequestValidationError, match="tier"):
        router.quote("x", tier="nope")


def test_default_tiers_quote_on_both_providers() -> None:
    plugins = Plugins.load()
    router = Router(
        load_config(None, known_providers=plugins.providers()), plugins=plugins, ledger=False
    )
    for tier in ("draft", "standard", "premium"):
        offers = router.quote("a cat", tier=tier)
        eligible = {o.provider for o in offers if o.eligible}
        assert eligible == {"runapi", "runflow"}, (tier, [(o.provider, o.reason) for o in offers])
        assert all(o.tier == tier for o in offers)


def test_memoized_quotes_match_fresh_ones_for_new_prompts() -> None:
    plugins = Plugins.load()
    config = load_config(None, known_providers=plugins.providers())
    router = Router(config, plugins=plugins, ledger=False)
    for tier in (None, "draft", "standard", "premium"):
        router.quote("a cat", tier=tier)
        again = router.quote("a dog", tier=tier)
        fresh = Router(config, plugins=plugins, ledger=False).quote("a dog", tier=tier)
        assert [o.to_dict() for o in again] == [o.to_dict() for o in fresh]
        assert [o.request for o in again] == [o.request for o in fresh]
        assert all(o.request is not None and o.request.prompt == "a dog" for o in again)


def test_memo_respects_what_a_provider_reads_of_the_prompt() -> None:
    # Runflow's gpt-image-1.5 refuses 1-character prompts; a quote memoized for a long prompt
    # must not be reused for a short one of the same shape (and the other way round).
    plugins = Plugins.load()
    router = Router(load_config({}, known_providers=plugins.providers()), plugins=plugins,
                    ledger=False)
    shape = {"model": "gpt-image-1.5", "quality": "medium"}
    long_first = {o.provider: o.eligible for o in router.quote("a long prompt", **shape)}
    short = {o.provider: o for o in router.quote("x", **shape)}
    long_again = {o.provider: o.eligible for o in router.quote("another prompt", **shape)}
    assert long_first["runflow"] and long_again["runflow"]
    assert not short["runflow"].eligible and "characters" in (short["runflow"].reason or "")

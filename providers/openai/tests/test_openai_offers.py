"""Offers: token prices from the shipped table (and the gpt-image-2 formula for other sizes),
retired models and parameters a model does not take as ineligible offers with reasons."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from imagerouter_openai import OpenAIProvider
from imagerouter_openai.tokens import TokenRates, cost_of_usage, formula_tokens

from imagerouter.offers import Offer
from imagerouter.request import ImageRequest


def offer_for(**fields: Any) -> Offer:
    provider = OpenAIProvider()
    request = ImageRequest.build(prompt=fields.pop("prompt", "a red fox"), **fields)
    (offer,) = provider.offers(
        request, prices=provider.price_table(), capabilities=provider.capabilities()
    )
    return offer


@pytest.mark.parametrize(
    ("quality", "size", "tokens"),
    [("high", (1024, 1024), 7024), ("high", (1536, 1024), 5488), ("high", (1792, 1024), 5063)],
)
def test_the_formula_reproduces_openais_calculator(
    quality: str, size: tuple[int, int], tokens: int
) -> None:
    assert formula_tokens(96, *size) == tokens


def test_the_shipped_table_matches_the_formula() -> None:
    provider = OpenAIProvider()
    prices = provider.price_table()
    factors = {"low": 16, "medium": 48, "high": 96}
    for path, value in prices.rows():
        model, kind, *rest = path.split(".")
        if model == "gpt-image-2" and kind == "image_output_tokens":
            quality, size = rest
            width, height = (int(side) for side in size.split("x"))
            assert formula_tokens(factors[quality], width, height) == int(value), path


def test_medium_1024_is_its_output_tokens_plus_the_prompt() -> None:
    offer = offer_for(quality="medium", size="1024x1024", prompt="a red fox")
    assert offer.eligible, offer.reason
    # 1,756 tokens at $30/M, plus ceil(9 / 4) = 3 prompt tokens at $5/M: $0.052695, rounded
    # up to a hundredth of a cent.
    assert (1756 * Decimal(30) + 3 * Decimal(5)) / Decimal(1_000_000) == Decimal("0.052695")
    assert offer.per_image_usd == Decimal("0.0527")
    assert offer.params["size"] == "1024x1024" and offer.delivered_size == (1024, 1024)
    assert offer.params["model"] == "gpt-image-2"


def test_other_sizes_are_priced_by_the_formula() -> None:
    offer = offer_for(quality="high", size="1792x1024")
    assert offer.eligible and offer.per_image_usd is not None
    assert offer.per_image_usd > 5063 * Decimal(30) / Decimal(1_000_000)


def test_quality_auto_is_priced_as_high() -> None:
    offer = offer_for(size="1024x1024")
    assert offer.params["quality"] == "high"
    assert any("quality auto" in note for note in offer.notes)


def test_retired_models_are_ineligible_and_say_so() -> None:
    offer = offer_for(model="gpt-image-1.5")
    assert not offer.eligible
    assert offer.reason is not None and "2026-12-01" in offer.reason
    assert "aggregators" in offer.reason


def test_up_to_ten_images_per_call() -> None:
    from imagerouter_openai.mapping import split_requests

    assert split_requests(12, 10) == (10, 2)
    offer = offer_for(quality="low", n=4)
    assert offer.batches == (4,) and offer.params["n"] == 4


def test_input_fidelity_on_gpt_image_2_is_ineligible_not_a_paid_400() -> None:
    offer = offer_for(images=[b"x"], input_fidelity="high")
    assert not offer.eligible
    assert offer.reason is not None and "input_fidelity" in offer.reason


def test_moderation_is_forwarded() -> None:
    offer = offer_for(moderation="low", quality="low")
    assert offer.eligible and offer.params["moderation"] == "low"


def test_a_size_outside_openais_rules_is_ineligible() -> None:
    offer = offer_for(size="4000x1000")
    assert not offer.eligible and offer.reason is not None and "size rule" in offer.reason


def test_usage_is_the_billed_cost() -> None:
    rates = TokenRates.lookup(OpenAIProvider().price_table(), "gpt-image-2")
    assert rates is not None
    usage = {
        "input_tokens": 50,
        "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
        "output_tokens": 4160,
        "total_tokens": 4210,
    }
    expected = (10 * Decimal(5) + 40 * Decimal(8) + 4160 * Decimal(30)) / Decimal(1_000_000)
    assert cost_of_usage(usage, rates) == expected
    assert cost_of_usage(None, rates) is None


def test_price_overrides_reach_the_offer() -> None:
    provider = OpenAIProvider()
    prices = provider.price_table().with_overrides(
        {"gpt-image-2": {"usd_per_1m_tokens": {"image_out": "60"}}}
    )
    request = ImageRequest.build(prompt="x", quality="low", size="1024x1024")
    (offer,) = provider.offers(request, prices=prices, capabilities=provider.capabilities())
    assert offer.per_image_usd is not None and offer.per_image_usd > Decimal("0.0117")

"""Token billing: what an OpenAI image costs, before the call (from the price table's
output-token counts) and after it (from the response's `usage`).

OpenAI bills text in, image in and image out per 1M tokens. The rates and the per-quality,
per-size output-token counts are data (prices.yaml, overridable under
`providers.openai.prices`); nothing here holds a price.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from imagerouter.pricing import PriceTable

__all__ = [
    "MILLION",
    "TokenRates",
    "cost_of_usage",
    "estimate_text_tokens",
    "formula_tokens",
    "output_tokens",
]

MILLION = Decimal(1_000_000)
# OpenAI's tokenizer is not shipped here; ~4 characters per token is its own rule of thumb
# for English. Prompt tokens cost $5/M, so the error is a fraction of a cent.
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class TokenRates:
    """USD per 1M tokens for one model."""

    text_in: Decimal
    image_in: Decimal
    image_out: Decimal
    cached_text_in: Decimal | None = None
    cached_image_in: Decimal | None = None
    partial_image_tokens: int = 0
    assumed_input_image_tokens: int = 0

    @classmethod
    def lookup(cls, prices: PriceTable, model: str) -> TokenRates | None:
        """The model's rates, or None when the table has none for it."""

        def rate(name: str) -> Decimal | None:
            return prices.lookup(model, "usd_per_1m_tokens", name)

        text_in, image_in, image_out = rate("text_in"), rate("image_in"), rate("image_out")
        if text_in is None or image_in is None or image_out is None:
            return None
        partial = prices.lookup(model, "partial_image_tokens")
        assumed = prices.lookup(model, "assumed_input_image_tokens")
        return cls(
            text_in=text_in,
            image_in=image_in,
            image_out=image_out,
            cached_text_in=rate("cached_text_in"),
            cached_image_in=rate("cached_image_in"),
            partial_image_tokens=int(partial) if partial is not None else 0,
            assumed_input_image_tokens=int(assumed) if assumed is not None else 0,
        )


def estimate_text_tokens(prompt: str) -> int:
    return max(1, math.ceil(len(prompt) / _CHARS_PER_TOKEN))


def formula_tokens(factor: int, width: int, height: int) -> int:
    """gpt-image-2's output tokens for any size (T-CALC's formula, see prices.yaml notes):
    ceil(f * round(f * short/long) * (2,000,000 + W*H) / 4,000,000)."""
    short, long = sorted((width, height))
    # Decimal keeps the product exact: a float ceil can land one token off.
    steps = round(Decimal(factor) * Decimal(short) / Decimal(long))
    tokens = Decimal(factor) * steps * (Decimal(2_000_000) + width * height) / Decimal(4_000_000)
    return int(tokens.to_integral_value(rounding="ROUND_CEILING"))


def output_tokens(
    prices: PriceTable, model: str, quality: str, width: int, height: int
) -> int | None:
    """Image-output tokens of one image: the table's count, else the model's formula, else
    None (no figure: the offer is ineligible rather than guessed)."""
    listed = prices.lookup(model, "image_output_tokens", quality, f"{width}x{height}")
    if listed is not None:
        return int(listed)
    factor = prices.lookup(model, "token_formula", quality)
    if factor is not None:
        return formula_tokens(int(factor), width, height)
    return None


def _count(node: Any, key: str) -> int:
    if not isinstance(node, Mapping):
        return 0
    value = node.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def cost_of_usage(usage: Any, rates: TokenRates) -> Decimal | None:
    """The billed USD of one response from its `usage` block, or None when it has none.

    Input tokens split into text and image (`input_tokens_details`); without the split every
    input token is priced as text. Output tokens are image tokens (OpenAI's image models
    write no billed text); the output text tokens, if any, are priced at the image rate so
    the ledger never under-states a bill.
    """
    if not isinstance(usage, Mapping) or "output_tokens" not in usage:
        return None
    input_total = _count(usage, "input_tokens")
    details = usage.get("input_tokens_details")
    if isinstance(details, Mapping):
        text_in = _count(details, "text_tokens")
        image_in = _count(details, "image_tokens")
        text_in += max(0, input_total - text_in - image_in)
    else:
        text_in, image_in = input_total, 0
    output = _count(usage, "output_tokens")
    total = text_in * rates.text_in + image_in * rates.image_in + output * rates.image_out
    return total / MILLION

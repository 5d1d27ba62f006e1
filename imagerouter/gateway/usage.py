"""OpenAI's `usage` block for an images response, when the backend reports no tokens.

RunAPI and Runflow bill per image and report no tokens, so the gateway computes what OpenAI
would have counted, from OpenAI's published numbers (/work/shared/provider-apis/openai.md §7):

- output image tokens: for `gpt-image-1.5` the official quality x size table (the three fixed
  sizes; another size is scaled by its pixel count from the nearest-ratio entry); for
  `gpt-image-2` the calculator's formula `ceil(f * round(f*S/L) * (2e6 + W*H) / 4e6)` with
  `f` = 16, 48, 96 for low, medium, high (S, L: the short and long edge);
- input text tokens: one token per four characters of the prompt, rounded up (OpenAI's rule
  of thumb; the exact tokenizer is not public for image models);
- input image tokens: not published per size, so 0.

A quality left to the backend counts as `high` (what OpenAI's `auto` picks for most prompts).
Each value is an estimate, never a bill: the real cost is `x-imagerouter-cost-usd`.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["estimated_usage", "output_image_tokens"]

# gpt-image-1 / 1-mini / 1.5, from OpenAI's image-generation guide (quality -> size -> tokens).
_TABLE_1X: dict[str, dict[tuple[int, int], int]] = {
    "low": {(1024, 1024): 272, (1024, 1536): 408, (1536, 1024): 400},
    "medium": {(1024, 1024): 1056, (1024, 1536): 1584, (1536, 1024): 1568},
    "high": {(1024, 1024): 4160, (1024, 1536): 6240, (1536, 1024): 6208},
}
_FACTOR_2 = {"low": 16, "medium": 48, "high": 96}


def output_image_tokens(model: str, quality: str, width: int, height: int) -> int:
    """The image output tokens of one image of `width` x `height` at `quality`."""
    quality = quality if quality in _FACTOR_2 else "high"
    if model.startswith("gpt-image-1"):
        table = _TABLE_1X[quality]
        exact = table.get((width, height))
        if exact is not None:
            return exact
        base = min(table, key=lambda wh: abs(wh[0] / wh[1] - width / height))
        return math.ceil(table[base] * (width * height) / (base[0] * base[1]))
    f = _FACTOR_2[quality]
    short, long = sorted((width, height))
    return math.ceil(f * round(f * short / long) * (2_000_000 + width * height) / 4_000_000)


def estimated_usage(
    *, model: str, quality: str, width: int, height: int, images: int, prompt_chars: int
) -> dict[str, Any]:
    """OpenAI's `ImagesResponse.usage` for `images` images of one size."""
    text_tokens = math.ceil(prompt_chars / 4)
    image_tokens = images * output_image_tokens(model, quality, width, height)
    return {
        "input_tokens": text_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
        "output_tokens": image_tokens,
        "output_tokens_details": {"image_tokens": image_tokens, "text_tokens": 0},
        "total_tokens": text_tokens + image_tokens,
    }

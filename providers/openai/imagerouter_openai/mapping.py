"""How a normalized `ImageRequest` becomes an OpenAI Images API call (pure: no I/O).

OpenAI takes the request's own vocabulary (`size` as `WxH` or `auto`, `quality`,
`background`, `output_format`, `n`, `moderation`, `input_fidelity`, `output_compression`,
`stream` + `partial_images`), so mapping is mostly checking: a parameter the model does not
take is an ineligible offer with the reason, never a 400 paid for by a retry. Prices come
from token counts (tokens.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal
from typing import Any

from imagerouter.geometry import pixels_for
from imagerouter.offers import Offer
from imagerouter.pricing import PriceTable
from imagerouter.provider_kit import batched_offer, snap_size, split_images
from imagerouter.request import ImageRequest

from .tokens import TokenRates, estimate_text_tokens, output_tokens

__all__ = ["PROVIDER", "build_offer", "size_problem", "split_requests"]

PROVIDER = "openai"
_ESTIMATE_STEP = Decimal("0.0001")


class _Ineligible(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


split_requests = split_images  # n images in calls of at most a limit: 12 by 10 -> (10, 2)


def size_problem(width: int, height: int, rules: Mapping[str, Any]) -> str | None:
    """The first custom-size rule (capabilities `custom_size`) that WxH breaks, or None."""
    size = f"{width}x{height}"
    multiple = int(rules.get("multiple", 16))
    if width % multiple or height % multiple:
        return f"{size}: both sides must be multiples of {multiple}"
    if max(width, height) > int(rules.get("max_edge", 3840)):
        return f"{size}: the long edge may be at most {rules.get('max_edge', 3840)}px"
    if max(width, height) / min(width, height) > float(rules.get("max_ratio", 3)):
        return f"{size}: the aspect ratio may be at most {rules.get('max_ratio', 3)}:1"
    pixels = width * height
    low, high = int(rules.get("min_pixels", 655_360)), int(rules.get("max_pixels", 8_294_400))
    if not low <= pixels <= high:
        return f"{size}: {pixels:,} pixels is outside {low:,} to {high:,}"
    return None


def build_offer(
    request: ImageRequest, *, prices: PriceTable, capabilities: Mapping[str, Any]
) -> Offer:
    """The one offer OpenAI makes for `request` (eligible, or not with the reason)."""
    try:
        return _build(request, prices, capabilities)
    except _Ineligible as exc:
        return Offer.ineligible(PROVIDER, request, exc.reason)


def _model_caps(request: ImageRequest, caps: Mapping[str, Any]) -> Mapping[str, Any]:
    model = str(request.model)
    retired = (caps.get("retired") or {}).get(model)
    if isinstance(retired, Mapping):
        elsewhere = " (the aggregators still serve it)" if model == "gpt-image-1.5" else ""
        raise _Ineligible(
            f"OpenAI shut {model} down on {retired.get('shut_down_on')}{elsewhere}; "
            f"OpenAI recommends {retired.get('use')}"
        )
    model_caps = (caps.get("models") or {}).get(model)
    if not isinstance(model_caps, Mapping):
        raise _Ineligible(f"OpenAI's Images API serves no model {model}")
    return model_caps


def _build(request: ImageRequest, prices: PriceTable, caps: Mapping[str, Any]) -> Offer:
    model_caps = _model_caps(request, caps)
    notes: list[str] = []
    max_inputs = int(caps.get("max_input_images", 16))
    if len(request.images) > max_inputs:
        raise _Ineligible(f"{len(request.images)} input images; OpenAI takes at most {max_inputs}")
    quality: str
    if request.quality is None:
        quality = str(model_caps.get("default_quality", "high"))
        notes.append(f"quality auto: sent and priced as {quality}, OpenAI's dearest default")
    else:
        quality = str(request.quality)
    if quality not in model_caps.get("qualities", ()):
        raise _Ineligible(f"OpenAI's {request.model} has no quality {quality}")
    if request.background not in model_caps.get("backgrounds", ("auto", "opaque")):
        raise _Ineligible(f"OpenAI's {request.model} takes no background {request.background}")
    if request.background == "transparent" and request.output_format == "jpeg":
        raise _Ineligible("OpenAI makes transparent images as png or webp only, not jpeg")

    params: dict[str, Any] = {
        "model": str(model_caps.get("wire_model", request.model)),
        "quality": quality,
        "output_format": request.output_format,
        "background": request.background,
    }
    _optional_fields(request, model_caps, caps, params)
    size = _size(request, caps, params, notes)
    price = _per_image(request, prices, quality, size, params, notes)

    # A stream carries one image's events (n > 1 in a stream is undocumented): one per call.
    per_call = 1 if params.get("stream") else int(caps.get("max_images_per_request", 10))
    return batched_offer(
        PROVIDER,
        request,
        params=params,
        count_param="n",
        per_call=per_call,
        per_image_usd=price,
        notes=notes,
        split_note="OpenAI makes at most {per_call} images per call: {calls} calls",
        delivered_size=size,
    )


def _optional_fields(
    request: ImageRequest,
    model_caps: Mapping[str, Any],
    caps: Mapping[str, Any],
    params: dict[str, Any],
) -> None:
    """moderation, input_fidelity, output_compression, partial_images: sent when asked, and
    an ineligible offer when the model does not take them (a 400 would be paid in time)."""
    wanted = {
        "moderation": getattr(request, "moderation", None),
        "input_fidelity": getattr(request, "input_fidelity", None),
        "output_compression": getattr(request, "output_compression", None),
    }
    for name, value in wanted.items():
        if value is None:
            continue
        if not model_caps.get(name, False):
            raise _Ineligible(f"OpenAI's {request.model} does not take {name}")
        if name == "input_fidelity" and request.operation != "edit":
            continue  # an edit-only field: a generation has nothing to be faithful to
        if name == "output_compression" and request.output_format == "png":
            continue  # OpenAI compresses jpeg and webp only
        params[name] = value
    partials = int(getattr(request, "partial_images", 0) or 0)
    if partials:
        limit = int(caps.get("max_partial_images", 3))
        if not model_caps.get("stream", False) or partials > limit:
            raise _Ineligible(f"OpenAI's {request.model} streams 0 to {limit} partial images")
        params["stream"] = True
        params["partial_images"] = partials


def _size(
    request: ImageRequest, caps: Mapping[str, Any], params: dict[str, Any], notes: list[str]
) -> tuple[int, int] | None:
    rules: Mapping[str, Any] = caps.get("custom_size") or {}
    multiple = int(rules.get("multiple", 16))
    geometry = request.geometry
    if geometry.kind == "auto":
        params["size"] = "auto"
        return None
    if geometry.kind == "ratio":
        assert geometry.ratio is not None and geometry.resolution is not None
        width, height = pixels_for(geometry.ratio, geometry.resolution, multiple)
        width, height = _fit(width, height, rules)
    else:
        assert geometry.width is not None and geometry.height is not None
        width, height = snap_size(
            geometry.width, geometry.height, multiple, notes, title="OpenAI", verb="sent as"
        )
    problem = size_problem(width, height, rules)
    if problem is not None:
        raise _Ineligible(f"OpenAI's size rule broken: {problem}")
    params["size"] = f"{width}x{height}"
    return (width, height)


def _fit(width: int, height: int, rules: Mapping[str, Any]) -> tuple[int, int]:
    """Shrink (keeping the ratio) until the area fits the pixel limit."""
    step = int(rules.get("multiple", 16))
    limit = int(rules.get("max_pixels", 8_294_400))
    if width * height <= limit:
        return width, height
    scale = math.sqrt(limit / (width * height))
    return (
        max(step, math.floor(width * scale / step) * step),
        max(step, math.floor(height * scale / step) * step),
    )


def _per_image(
    request: ImageRequest,
    prices: PriceTable,
    quality: str,
    size: tuple[int, int] | None,
    params: Mapping[str, Any],
    notes: list[str],
) -> Decimal:
    """USD per image: its output tokens (plus partials) at the image-out rate, and the
    call's input (prompt text, input images) shared by the images of one call."""
    model = str(request.model)
    rates = TokenRates.lookup(prices, model)
    if rates is None:
        raise _Ineligible(f"no token rates for {model} (providers.openai.prices.{model})")
    if size is None:
        # Size auto: OpenAI picks; price the dearest classic size so a budget is never short.
        candidates = [
            tokens
            for each in ((1024, 1024), (1536, 1024), (1024, 1536))
            if (tokens := output_tokens(prices, model, quality, *each)) is not None
        ]
        if not candidates:
            raise _Ineligible(f"no output-token figure for {model} {quality} at size auto")
        tokens = max(candidates)
        notes.append("size auto: priced as the dearest of 1024x1024, 1536x1024, 1024x1536")
    else:
        found = output_tokens(prices, model, quality, *size)
        if found is None:
            width, height = size
            raise _Ineligible(
                f"OpenAI publishes no output-token count for {model} {quality} {width}x{height}"
                f" (price it: providers.openai.prices.{model}.image_output_tokens)"
            )
        tokens = found
    tokens += rates.partial_image_tokens * int(params.get("partial_images", 0))
    per_call_n = 1 if params.get("stream") else min(request.n, 10)
    inputs = len(request.images) + (1 if request.mask is not None else 0)
    input_cost = (
        estimate_text_tokens(request.prompt) * rates.text_in
        + inputs * rates.assumed_input_image_tokens * rates.image_in
    )
    exact = (tokens * rates.image_out + input_cost / per_call_n) / Decimal(1_000_000)
    # An estimate (the prompt's tokens are counted roughly): rounded up to a hundredth of a
    # cent, so it reads cleanly and never under-quotes a budget. `usage` gives the bill.
    return exact.quantize(_ESTIMATE_STEP, rounding=ROUND_CEILING)

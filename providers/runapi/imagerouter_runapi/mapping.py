"""How an imagerouter request maps onto RunAPI's gpt-image fields (pure, no I/O).

RunAPI speaks in an aspect ratio plus a 1k/2k/4k class (gpt-image-2) or an aspect ratio plus
a quality (gpt-image-1.5), one image per task, PNG out. `runapi_offer()` turns a request into
one `Offer`: eligible with RunAPI's params and price, or ineligible with a reason a user can
act on. docs/providers/runapi.md explains each rule and where the facts came from.

Each offer says the pixels RunAPI will deliver (`Offer.delivered_size`). RunAPI documents no
pixel sizes; **(inference)** a ratio at a class is taken to be `geometry.pixels_for` (about the
class's area, sides multiples of 16), which is also what the emulator renders, and
gpt-image-1.5 makes OpenAI's classic three sizes. Under size policy `exact` or `at_least` a
WxH request is sent at the smallest class that covers it (1536x1024 is 3:2 at 2k, 2512x1680,
which the router downscales), priced at that class: what it really costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from imagerouter.geometry import (
    RESOLUTIONS,
    Ratio,
    covers,
    nearest_ratio,
    pixels_for,
    resolution_class,
    same_ratio,
)
from imagerouter.offers import Offer
from imagerouter.pricing import PriceTable
from imagerouter.request import ImageRequest

from .capabilities import ModelCapabilities, RunAPICapabilities

__all__ = [
    "GPT_IMAGE_15_PIXELS",
    "PROVIDER",
    "QUALITY_ON_GPT_IMAGE_2",
    "delivered_pixels",
    "runapi_offer",
]

PROVIDER = "runapi"

QUALITY_ON_GPT_IMAGE_2 = (
    "RunAPI's gpt-image-2 endpoints take no quality; leave quality unset, or list RunAPI in a "
    "tier without a quality"
)


# gpt-image-1.5's pixels per ratio: OpenAI's classic three sizes (what the model makes).
GPT_IMAGE_15_PIXELS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (1024, 1536),
    "3:2": (1536, 1024),
}


def delivered_pixels(model: str, aspect_ratio: str, resolution: str) -> tuple[int, int] | None:
    """The (width, height) RunAPI makes for a ratio at a class, or None for `auto` (the model
    chooses). See the module docstring: an inference, shared with the emulator."""
    if aspect_ratio == "auto":
        return None
    if model == "gpt-image-1.5":
        return GPT_IMAGE_15_PIXELS.get(aspect_ratio)
    for name in RESOLUTIONS:
        if name == resolution:
            return pixels_for(Ratio.parse(aspect_ratio), name)
    return None


class _Ineligible(Exception):
    """Raised inside the mapping; becomes an ineligible offer with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Shape:
    aspect_ratio: str
    resolution: str
    notes: tuple[str, ...] = ()


def runapi_offer(
    request: ImageRequest, *, prices: PriceTable, capabilities: RunAPICapabilities
) -> Offer:
    """The one offer RunAPI makes for `request`."""
    caps = capabilities.models.get(request.model)
    if caps is None:
        return Offer.ineligible(PROVIDER, request, f"RunAPI does not serve {request.model}")
    try:
        _check_common(request, capabilities)
        if request.model == "gpt-image-2":
            params, price, notes = _gpt_image_2(request, caps, capabilities, prices)
        else:
            params, price, notes = _gpt_image_15(request, caps, capabilities, prices)
        delivered = delivered_pixels(
            request.model, params["aspect_ratio"], params.get("output_resolution", "1k")
        )
    except _Ineligible as exc:
        return Offer.ineligible(PROVIDER, request, exc.reason)
    convert_to = None
    if request.output_format != "png":
        convert_to = request.output_format
        notes += (
            f"RunAPI has no output_format field and returns PNG; converted to "
            f"{request.output_format} locally after download",
        )
    return Offer.priced(
        PROVIDER,
        request,
        params=params,
        batches=(1,) * request.n,  # RunAPI makes one image per task
        per_image_usd=price,
        notes=notes,
        convert_to=convert_to,
        delivered_size=delivered,
    )


def _check_common(request: ImageRequest, capabilities: RunAPICapabilities) -> None:
    if request.mask is not None:
        raise _Ineligible(
            "RunAPI's gpt-image edit endpoints take no mask input (only source_image_urls)"
        )
    if request.background == "transparent":
        raise _Ineligible(
            "RunAPI's gpt-image endpoints have no background field, so a transparent "
            "background cannot be asked for"
        )
    limit = capabilities.max_input_images
    if len(request.images) > limit:
        raise _Ineligible(
            f"RunAPI takes at most {limit} source images per edit; this request has "
            f"{len(request.images)}"
        )


def _gpt_image_2(
    request: ImageRequest,
    caps: ModelCapabilities,
    capabilities: RunAPICapabilities,
    prices: PriceTable,
) -> tuple[dict[str, str], Decimal, tuple[str, ...]]:
    if request.quality is not None:
        raise _Ineligible(QUALITY_ON_GPT_IMAGE_2)
    geometry = request.geometry
    if geometry.kind == "auto":
        resolution = geometry.resolution or "1k"
        if not caps.accepts_auto:
            raise _Ineligible("RunAPI's gpt-image-2 takes no aspect_ratio auto here")
        if resolution not in caps.auto_resolutions:
            allowed = ", ".join(caps.auto_resolutions) or "none"
            raise _Ineligible(
                f"RunAPI's gpt-image-2 takes aspect_ratio auto only at {allowed} (its SDK: "
                f'"auto/unset only supports 1k"); asked for {resolution}. Give an aspect ratio '
                "for larger images"
            )
        shape = _Shape("auto", resolution)
    else:
        shape = _ratio_shape(request, caps, capabilities, model="gpt-image-2")
        shape = _covering_class(request, shape, caps, prices)
        combo = caps.forbidden_combo(shape.aspect_ratio, shape.resolution)
        if combo is not None:
            why = f" ({combo.why})" if combo.why else ""
            raise _Ineligible(
                f"RunAPI's gpt-image-2 cannot make {combo.aspect_ratio} at "
                f"{combo.output_resolution}{why}; pick another resolution or ratio"
            )
    if shape.resolution not in caps.resolutions:
        raise _Ineligible(
            f"RunAPI's gpt-image-2 takes output resolutions {', '.join(caps.resolutions)}; "
            f"asked for {shape.resolution}"
        )
    price = _price(prices, request, shape.resolution)
    params = {
        "model": "gpt-image-2",
        "aspect_ratio": shape.aspect_ratio,
        "output_resolution": shape.resolution,
    }
    return params, price, shape.notes


def _gpt_image_15(
    request: ImageRequest,
    caps: ModelCapabilities,
    capabilities: RunAPICapabilities,
    prices: PriceTable,
) -> tuple[dict[str, str], Decimal, tuple[str, ...]]:
    geometry = request.geometry
    if geometry.kind == "auto":
        raise _Ineligible(
            "gpt-image-1.5 on RunAPI needs an explicit aspect ratio "
            f"({', '.join(caps.ratios)}): aspect_ratio is required, so auto cannot be sent"
        )
    shape = _ratio_shape(request, caps, capabilities, model="gpt-image-1.5")
    if shape.resolution not in caps.resolutions:
        raise _Ineligible(
            f"gpt-image-1.5 makes 1k-class images only (asked for {shape.resolution})"
        )
    notes = shape.notes
    quality: str | None = request.quality
    if quality is None:
        quality = caps.default_quality or (caps.qualities[-1] if caps.qualities else "high")
        notes += (
            f"gpt-image-1.5 on RunAPI requires a quality; sent {quality} (the price is the "
            "same for every quality)",
        )
    elif quality not in caps.qualities:
        raise _Ineligible(
            f"gpt-image-1.5 on RunAPI has no `{quality}` quality "
            f"(it takes {', '.join(caps.qualities)})"
        )
    price = _price(prices, request, quality)
    params = {"model": "gpt-image-1.5", "aspect_ratio": shape.aspect_ratio, "quality": quality}
    return params, price, notes


def _ratio_shape(
    request: ImageRequest,
    caps: ModelCapabilities,
    capabilities: RunAPICapabilities,
    *,
    model: str,
) -> _Shape:
    """The allowed ratio and resolution class for a ratio or WxH geometry."""
    geometry = request.geometry
    tolerance = capabilities.ratio_tolerance
    allowed = caps.ratios
    if geometry.kind == "pixels":
        assert geometry.width is not None and geometry.height is not None
        width, height = geometry.width, geometry.height
        ratio = nearest_ratio(width, height, allowed, tolerance)
        if ratio is None:
            raise _Ineligible(_no_ratio(model, f"{width}x{height}", allowed, tolerance))
        resolution = resolution_class(width, height)
        return _Shape(ratio, resolution, (_pixels_note(model, width, height, ratio, resolution),))
    assert geometry.ratio is not None
    wanted = geometry.ratio
    resolution = geometry.resolution or "1k"
    exact = _exact(wanted, allowed)
    if exact is not None:
        return _Shape(exact, resolution)
    ratio = nearest_ratio(wanted.width, wanted.height, allowed, tolerance)
    if ratio is None:
        raise _Ineligible(_no_ratio(model, str(wanted), allowed, tolerance))
    note = f"RunAPI has no {wanted} ratio; sent the nearest allowed ratio, {ratio}"
    return _Shape(ratio, resolution, (note,))


def _pixels_note(model: str, width: int, height: int, ratio: str, resolution: str) -> str:
    made = delivered_pixels(model, ratio, resolution)
    makes = f" ({made[0]}x{made[1]})" if made is not None else ""
    return (
        f"RunAPI takes an aspect ratio and a resolution class, not pixels: {width}x{height} "
        f"is sent as {ratio} at {resolution}, and RunAPI chooses the exact pixels for that "
        f"ratio and class{makes}"
    )


def _covering_class(
    request: ImageRequest, shape: _Shape, caps: ModelCapabilities, prices: PriceTable
) -> _Shape:
    """Under size policy exact / at_least, the smallest class (from the one the size belongs
    to) that is allowed, priced, and makes the ratio at no fewer pixels than WxH. When none
    does, the shape stays as it is and quoting says why the offer cannot serve the size."""
    geometry = request.geometry
    if geometry.kind != "pixels" or request.size_policy in (None, "nearest"):
        return shape
    assert geometry.width is not None and geometry.height is not None
    wanted = (geometry.width, geometry.height)
    start = RESOLUTIONS.index(shape.resolution) if shape.resolution in RESOLUTIONS else 0
    for resolution in RESOLUTIONS[start:]:
        if resolution not in caps.resolutions:
            continue
        if caps.forbidden_combo(shape.aspect_ratio, resolution) is not None:
            continue
        if prices.lookup(request.model, request.operation, resolution) is None:
            continue
        made = delivered_pixels(request.model, shape.aspect_ratio, resolution)
        if made is None or not same_ratio(made, wanted) or not covers(made, wanted):
            continue
        if resolution == shape.resolution:
            return shape
        note = (
            f"RunAPI takes a ratio and a class, not pixels: {wanted[0]}x{wanted[1]} is sent as "
            f"{shape.aspect_ratio} at {resolution} ({made[0]}x{made[1]}), the smallest class "
            f"that covers it (size_policy {request.size_policy})"
        )
        return _Shape(shape.aspect_ratio, resolution, (note,))
    return shape


def _no_ratio(model: str, wanted: str, allowed: tuple[str, ...], tolerance: float) -> str:
    return (
        f"RunAPI's {model} takes aspect ratios {', '.join(allowed)}; {wanted} is not within "
        f"{tolerance:.0%} of any of them"
    )


def _price(prices: PriceTable, request: ImageRequest, dimension: str) -> Decimal:
    price = prices.lookup(request.model, request.operation, dimension)
    if price is None:
        raise _Ineligible(
            f"no RunAPI price for {request.model} {request.operation} at {dimension}; add one "
            f"under providers.runapi.prices.{request.model}.{request.operation}"
        )
    return price


def _exact(wanted: Ratio, allowed: tuple[str, ...]) -> str | None:
    """The allowed spelling of `wanted` (RunAPI writes 21:9, which reduces to 7:3)."""
    for text in allowed:
        try:
            if Ratio.parse(text) == wanted:
                return text
        except ValueError:
            continue
    return None

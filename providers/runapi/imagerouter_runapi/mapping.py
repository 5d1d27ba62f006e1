"""How an imagerouter request maps onto RunAPI's gpt-image fields (pure, no I/O).

RunAPI speaks in an aspect ratio plus a 1k/2k/4k class (gpt-image-2) or an aspect ratio plus
a quality (gpt-image-1.5), one image per task, PNG out. `runapi_offer()` turns a request into
one `Offer`: eligible with RunAPI's params and price, or ineligible with a reason a user can
act on. docs/providers/runapi.md explains each rule and where the facts came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from imagerouter.geometry import Ratio, nearest_ratio, resolution_class
from imagerouter.offers import Offer
from imagerouter.pricing import PriceTable
from imagerouter.request import ImageRequest

from .capabilities import ModelCapabilities, RunAPICapabilities

__all__ = ["PROVIDER", "QUALITY_ON_GPT_IMAGE_2", "runapi_offer"]

PROVIDER = "runapi"

QUALITY_ON_GPT_IMAGE_2 = (
    "RunAPI's gpt-image-2 endpoints take no quality; leave quality unset, or list RunAPI in a "
    "tier without a quality"
)


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
        note = (
            f"RunAPI takes an aspect ratio and a resolution class, not pixels: {width}x{height} "
            f"is sent as {ratio} at {resolution}, and RunAPI chooses the exact pixels for that "
            "ratio and class"
        )
        return _Shape(ratio, resolution, (note,))
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

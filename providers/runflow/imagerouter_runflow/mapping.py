"""How a normalized `ImageRequest` becomes a Runflow run (pure: no I/O).

Runflow's models take their options inside `input`: `quality`, `output_format`, `num_images`,
`image_size` (gpt-image-2: `{width, height}` or a preset/"auto"; gpt-image-1.5: one of three
fixed sizes or "auto") and, for gpt-image-1.5 only, `background`. The limits come from the
capability table (merged with the user's overrides by the router) and the prices from the
price table, both passed in, so a user's config changes what this module decides.

Each offer says the pixels Runflow will deliver (`Offer.delivered_size`): the `{width, height}`
sent for gpt-image-2, the fixed size for gpt-image-1.5, or None when Runflow chooses (auto).
Under size policy `exact` / `at_least` a gpt-image-2 WxH that breaks Runflow's rules only by
not being a multiple of 16 or by being under its pixel minimum is sent at the nearest larger
valid size of the same ratio, which the router then downscales to WxH. gpt-image-1.5's edit
takes `input_fidelity` (**[inference]**, runflow.md: "possibly input_fidelity"), forwarded
when the request sets it; nothing Runflow lists takes `moderation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from imagerouter.geometry import Ratio, nearest_ratio, pixels_for, resolution_class
from imagerouter.offers import Offer
from imagerouter.pricing import PriceTable
from imagerouter.provider_kit import batched_offer, deep_merge, snap_size, split_images
from imagerouter.request import ImageRequest

__all__ = [
    "DEFAULT_CAPABILITIES",
    "PROVIDER",
    "SizeRules",
    "build_offer",
    "merged_capabilities",
    "model_id_for",
    "size_problem",
    "split_runs",
]

PROVIDER = "runflow"

# Used when a capability is missing from both the shipped table and the user's overrides.
DEFAULT_CAPABILITIES: dict[str, Any] = {
    "max_images_per_run": 4,
    "max_input_images": 16,
    "max_upload_bytes": 50 * 1024 * 1024,
    "ratio_tolerance": 0.02,
    "gpt_image_2_size": {
        "multiple": 16,
        "max_edge": 3840,
        "max_ratio": 3,
        "min_pixels": 655_360,
        "max_pixels": 8_294_400,
    },
    "gpt_image_15_sizes": ["1024x1024", "1536x1024", "1024x1536"],
    "model_ids": {
        "gpt-image-2": {"generate": "openai/gpt-image-2", "edit": "openai/gpt-image-2/edit"},
        "gpt-image-1.5": {
            "generate": "openai/gpt-image-1.5",
            "edit": "openai/gpt-image-1.5/edit",
        },
    },
}


def merged_capabilities(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The defaults, then each layer on top, merged key by key (nested mappings too)."""
    result: dict[str, Any] = deep_merge(DEFAULT_CAPABILITIES, {})
    for layer in layers:
        if layer:
            result = deep_merge(result, layer)
    return result


def model_id_for(capabilities: Mapping[str, Any], model: str, operation: str) -> str:
    """Runflow's model id (the path in POST /v1/models/{model_id}/runs)."""
    caps = merged_capabilities(capabilities)
    model_id = caps["model_ids"].get(model, {}).get(operation)
    if not model_id:
        raise KeyError(f"no Runflow model id for {model} {operation}")
    return str(model_id)


@dataclass(frozen=True)
class SizeRules:
    """gpt-image-2's custom `{width, height}` rules."""

    multiple: int = 16
    max_edge: int = 3840
    max_ratio: float = 3.0
    min_pixels: int = 655_360
    max_pixels: int = 8_294_400

    @classmethod
    def from_capabilities(cls, capabilities: Mapping[str, Any]) -> SizeRules:
        raw = capabilities.get("gpt_image_2_size") or {}
        return cls(
            multiple=int(raw.get("multiple", cls.multiple)),
            max_edge=int(raw.get("max_edge", cls.max_edge)),
            max_ratio=float(raw.get("max_ratio", cls.max_ratio)),
            min_pixels=int(raw.get("min_pixels", cls.min_pixels)),
            max_pixels=int(raw.get("max_pixels", cls.max_pixels)),
        )


def size_problem(width: int, height: int, rules: SizeRules) -> str | None:
    """The first gpt-image-2 size rule that width x height breaks, or None."""
    size = f"{width}x{height}"
    if width % rules.multiple or height % rules.multiple:
        return f"{size}: both sides must be multiples of {rules.multiple}"
    if max(width, height) > rules.max_edge:
        return f"{size}: the long edge may be at most {rules.max_edge}px"
    if max(width, height) / min(width, height) > rules.max_ratio:
        return f"{size}: the aspect ratio may be at most {rules.max_ratio:g}:1"
    pixels = width * height
    if pixels < rules.min_pixels:
        return f"{size}: {pixels:,} pixels is below the minimum of {rules.min_pixels:,}"
    if pixels > rules.max_pixels:
        return f"{size}: {pixels:,} pixels is above the maximum of {rules.max_pixels:,}"
    return None


def prompt_fits_15(prompt: str, caps: Mapping[str, Any]) -> bool:
    """Whether the prompt's length is in gpt-image-1.5's documented range (2 to 32,000)."""
    limits = caps.get("gpt_image_15_prompt_chars")
    if not limits:
        return True
    return int(limits[0]) <= len(prompt) <= int(limits[1])


split_runs = split_images  # n images in runs of at most a limit: 10 by 4 -> (4, 4, 2)


class _Ineligible(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def build_offer(
    request: ImageRequest, *, prices: PriceTable, capabilities: Mapping[str, Any]
) -> Offer:
    """The one offer Runflow makes for `request` (eligible, or not with the reason)."""
    caps = merged_capabilities(capabilities)
    try:
        return _build(request, prices, caps)
    except _Ineligible as exc:
        return Offer.ineligible(PROVIDER, request, exc.reason)


def _build(request: ImageRequest, prices: PriceTable, caps: Mapping[str, Any]) -> Offer:
    notes: list[str] = []
    max_inputs = int(caps["max_input_images"])
    if len(request.images) > max_inputs:
        raise _Ineligible(
            f"{len(request.images)} input images; Runflow takes at most {max_inputs} "
            "(providers.runflow.capabilities.max_input_images)"
        )
    if request.model not in caps["model_ids"] or not caps["model_ids"][request.model].get(
        request.operation
    ):
        raise _Ineligible(f"Runflow has no model id for {request.model} {request.operation}")

    if request.model == "gpt-image-1.5" and not prompt_fits_15(request.prompt, caps):
        low, high = (int(v) for v in caps["gpt_image_15_prompt_chars"])
        raise _Ineligible(
            f"Runflow's gpt-image-1.5 takes prompts of {low} to {high:,} characters "
            f"(this one has {len(request.prompt):,})"
        )

    quality = request.quality
    if quality is None:
        quality = "high"
        notes.append("Runflow's default quality is high")
    params: dict[str, Any] = {"quality": quality, "output_format": request.output_format}

    if request.model == "gpt-image-2":
        price_dims = _gpt_image_2_size(request, caps, params, notes)
        price = prices.lookup(request.model, request.operation, quality)
    else:
        price_dims = _gpt_image_15_size(request, caps, params, notes)
        price = _price_15(prices, request, quality, price_dims, caps, notes)
    if price is None:
        raise _Ineligible(
            f"no price for {request.model} {request.operation} {quality} {price_dims or ''}".strip()
        )

    if (
        request.input_fidelity is not None
        and request.model == "gpt-image-1.5"
        and request.operation == "edit"
    ):
        params["input_fidelity"] = request.input_fidelity
    if request.mask is not None and request.model == "gpt-image-1.5":
        notes.append("gpt-image-1.5 edit's mask field is inferred as mask_url")
    return batched_offer(
        PROVIDER,
        request,
        params=params,
        count_param="num_images",
        per_call=int(caps["max_images_per_run"]),
        per_image_usd=price,
        notes=notes,
        split_note="Runflow allows at most {per_call} images per run: {calls} runs",
        delivered_size=_delivered(params.get("image_size")),
    )


def _delivered(image_size: Any) -> tuple[int, int] | None:
    """The pixels of an `image_size` value: `{width, height}`, `WxH`, or None (auto/preset)."""
    if isinstance(image_size, Mapping):
        return int(image_size["width"]), int(image_size["height"])
    if isinstance(image_size, str) and "x" in image_size:
        width, _, height = image_size.partition("x")
        if width.isdigit() and height.isdigit():
            return int(width), int(height)
    return None


def _covering_size(width: int, height: int, rules: SizeRules) -> tuple[int, int]:
    """The smallest size of about width:height that is at least width x height, has sides in
    multiples of `rules.multiple` and at least `rules.min_pixels` pixels (the router then
    downscales it to exactly width x height)."""
    step = rules.multiple
    scale = max(1.0, math.sqrt(rules.min_pixels / (width * height)))
    out_w = math.ceil(width * scale / step) * step
    out_h = math.ceil(height * scale / step) * step
    while out_w * out_h < rules.min_pixels:  # ceil of each side rarely falls short; be sure
        out_w, out_h = out_w + step, out_h + step
    return out_w, out_h


def _gpt_image_2_size(
    request: ImageRequest, caps: Mapping[str, Any], params: dict[str, Any], notes: list[str]
) -> str | None:
    if request.background == "transparent":
        raise _Ineligible("Runflow's gpt-image-2 lists no background input")
    if request.background == "opaque":
        notes.append("Runflow's gpt-image-2 lists no background input; its images are opaque")
    rules = SizeRules.from_capabilities(caps)
    geometry = request.geometry
    if geometry.kind == "auto":
        if request.operation == "edit":
            params["image_size"] = "auto"
        else:
            notes.append(
                "size auto: image_size is left out, so Runflow uses its default (landscape_4_3)"
            )
        return None
    if geometry.kind == "ratio":
        assert geometry.ratio is not None and geometry.resolution is not None
        ratio = geometry.ratio
        if max(ratio.value, 1 / ratio.value) > rules.max_ratio:
            raise _Ineligible(
                f"aspect ratio {ratio}: Runflow's gpt-image-2 allows at most {rules.max_ratio:g}:1"
            )
        natural = pixels_for(ratio, geometry.resolution, rules.multiple)
        width, height = _fit_pixels(*natural, rules)
        if (width, height) != natural:
            notes.append(
                f"{ratio} at {geometry.resolution} sent as {width}x{height} to stay within "
                "Runflow's pixel limit"
            )
    else:
        assert geometry.width is not None and geometry.height is not None
        asked = (geometry.width, geometry.height)
        if request.size_policy in ("exact", "at_least") and (
            size_problem(*asked, rules) is not None
        ):
            width, height = _covering_size(*asked, rules)
            if (width, height) != asked and size_problem(width, height, rules) is None:
                notes.append(
                    f"{asked[0]}x{asked[1]} sent as {width}x{height}, the nearest larger size "
                    f"Runflow's gpt-image-2 takes (multiples of {rules.multiple}, at least "
                    f"{rules.min_pixels:,} pixels)"
                )
                params["image_size"] = {"width": width, "height": height}
                return f"{width}x{height}"
        width, height = snap_size(
            geometry.width,
            geometry.height,
            rules.multiple,
            notes,
            title="Runflow",
            verb="rounded to",
        )
    problem = size_problem(width, height, rules)
    if problem is not None:
        raise _Ineligible(f"Runflow's gpt-image-2 size rule broken: {problem}")
    params["image_size"] = {"width": width, "height": height}
    return f"{width}x{height}"


def _fit_pixels(width: int, height: int, rules: SizeRules) -> tuple[int, int]:
    """Shrink (keeping the ratio) until the area fits; rounding 4k up can overshoot it."""
    step = rules.multiple
    if width * height <= rules.max_pixels:
        return width, height
    scale = math.sqrt(rules.max_pixels / (width * height))
    width = max(step, math.floor(width * scale / step) * step)
    height = max(step, math.floor(height * scale / step) * step)
    return width, height


def _sizes_15(caps: Mapping[str, Any]) -> list[str]:
    return [str(size) for size in caps["gpt_image_15_sizes"]]


def _gpt_image_15_size(
    request: ImageRequest, caps: Mapping[str, Any], params: dict[str, Any], notes: list[str]
) -> str | None:
    params["background"] = request.background
    sizes = _sizes_15(caps)
    by_ratio = {str(_ratio_of(size)): size for size in sizes}
    listed = ", ".join([*sizes, "auto"])
    tolerance = float(caps["ratio_tolerance"])
    geometry = request.geometry
    if geometry.kind == "auto":
        params["image_size"] = "auto"
        return None
    if geometry.kind == "ratio":
        assert geometry.ratio is not None
        if geometry.resolution != "1k":
            raise _Ineligible("gpt-image-1.5 makes 1k-class images only")
        ratio = geometry.ratio
        match = nearest_ratio(ratio.width, ratio.height, by_ratio, tolerance)
        if match is None:
            raise _Ineligible(f"gpt-image-1.5 has no size at {ratio}; its sizes are {listed}")
        size = by_ratio[match]
        if match != str(ratio):
            notes.append(f"{ratio} served as {size} ({match}, the nearest gpt-image-1.5 size)")
        params["image_size"] = size
        return size
    assert geometry.width is not None and geometry.height is not None
    asked = f"{geometry.width}x{geometry.height}"
    if asked in sizes:
        params["image_size"] = asked
        return asked
    if resolution_class(geometry.width, geometry.height) != "1k":
        raise _Ineligible(f"gpt-image-1.5 makes 1k-class images only; its sizes are {listed}")
    match = nearest_ratio(geometry.width, geometry.height, by_ratio, tolerance)
    if match is None:
        raise _Ineligible(f"gpt-image-1.5 has no size near {asked}; its sizes are {listed}")
    size = by_ratio[match]
    notes.append(f"{asked} served as {size}, the gpt-image-1.5 size at {match}")
    params["image_size"] = size
    return size


def _ratio_of(size: str) -> Ratio:
    width, _, height = size.partition("x")
    return Ratio.of(int(width), int(height))


def _price_15(
    prices: PriceTable,
    request: ImageRequest,
    quality: str,
    size: str | None,
    caps: Mapping[str, Any],
    notes: list[str],
) -> Decimal | None:
    if size is not None:
        return prices.lookup(request.model, request.operation, quality, size)
    # Size auto: Runflow picks the size, so quote the dearest one (never under-quote a budget).
    candidates = [
        (price, each)
        for each in _sizes_15(caps)
        if (price := prices.lookup(request.model, request.operation, quality, each)) is not None
    ]
    if not candidates:
        return None
    price, dearest = max(candidates)
    notes.append(
        f"size auto: Runflow chooses the size, so the price is that of the dearest "
        f"{quality} size ({dearest})"
    )
    return price

"""The emulator's input checks for Runflow's GPT Image models, per the public model schemas.

Each check returns `(field, message)` pairs so the emulator can answer one 422 with every
problem, the way Runflow's `{"code": "VALIDATION_ERROR", "errors": [...]}` envelope does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .mapping import SizeRules, size_problem

__all__ = ["MODELS", "ModelSpec", "RunShape", "validate_run"]

# fal's preset names, which Runflow's gpt-image-2 schema wording matches (see the docs).
PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
QUALITIES = ("low", "medium", "high")
FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("auto", "transparent", "opaque")
SIZES_15 = ("1024x1024", "1536x1024", "1024x1536")
MAX_IMAGE_URLS = 16
MAX_CLIENT_REF = 255


@dataclass(frozen=True)
class ModelSpec:
    """One Runflow model id the emulator serves."""

    model: str  # gpt-image-2 | gpt-image-1.5
    operation: str  # generate | edit
    fields: frozenset[str]
    default_size: str  # "landscape_4_3" | "auto" | "1024x1024"


_COMMON = frozenset({"prompt", "num_images", "output_format", "quality", "sync_mode"})
_EDIT = frozenset({"image_urls", "mask_url"})
MODELS: dict[str, ModelSpec] = {
    "openai/gpt-image-2": ModelSpec(
        "gpt-image-2", "generate", _COMMON | {"image_size"}, "landscape_4_3"
    ),
    "openai/gpt-image-2/edit": ModelSpec(
        "gpt-image-2", "edit", _COMMON | _EDIT | {"image_size"}, "auto"
    ),
    "openai/gpt-image-1.5": ModelSpec(
        "gpt-image-1.5", "generate", _COMMON | {"image_size", "background"}, "1024x1024"
    ),
    "openai/gpt-image-1.5/edit": ModelSpec(
        "gpt-image-1.5",
        "edit",
        _COMMON | _EDIT | {"image_size", "background", "input_fidelity"},
        "auto",
    ),
}


@dataclass(frozen=True)
class RunShape:
    """What a valid run will produce."""

    spec: ModelSpec
    prompt: str
    quality: str
    fmt: str
    count: int
    width: int
    height: int
    size_key: str  # the price dimension for gpt-image-1.5 ("1024x1024", ...)
    transparent: bool


Problems = list[tuple[str, str]]


def validate_run(
    spec: ModelSpec, body: Mapping[str, Any], *, max_images: int
) -> tuple[RunShape | None, Problems]:
    """Check a create body; return the run's shape, or the list of problems."""
    problems: Problems = []
    raw_input = body.get("input")
    if not isinstance(raw_input, Mapping):
        return None, [("input", "is required and must be an object")]
    _envelope(body, problems)
    data = dict(raw_input)
    for name in sorted(set(data) - spec.fields):
        problems.append((f"input.{name}", f"is not an input of this model ({spec.model})"))

    prompt = data.get("prompt")
    min_prompt = 2 if spec.model == "gpt-image-1.5" else 1
    if not isinstance(prompt, str) or len(prompt.strip()) < min_prompt:
        problems.append(("input.prompt", f"is required (at least {min_prompt} characters)"))
    elif len(prompt) > 32_000:
        problems.append(("input.prompt", "may be at most 32000 characters"))
    quality = _enum(data, "quality", QUALITIES, "high", problems)
    fmt = _enum(data, "output_format", FORMATS, "png", problems)
    background = "auto"
    if "background" in spec.fields:
        background = _enum(data, "background", BACKGROUNDS, "auto", problems)
    count = data.get("num_images", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= max_images:
        problems.append(("input.num_images", f"must be an integer from 1 to {max_images}"))
        count = 1
    if "sync_mode" in data and not isinstance(data["sync_mode"], bool):
        problems.append(("input.sync_mode", "must be a boolean"))
    if spec.operation == "edit":
        _image_urls(data, problems)
    width, height, size_key = _size(spec, data.get("image_size", spec.default_size), problems)
    if problems:
        return None, problems
    assert isinstance(prompt, str)
    transparent = background == "transparent" and fmt != "jpeg"
    # In RunShape's field order (every name above is the field's own).
    return RunShape(spec, prompt, quality, fmt, count, width, height, size_key, transparent), []


def _envelope(body: Mapping[str, Any], problems: Problems) -> None:
    client_ref = body.get("client_ref")
    if client_ref is not None and (
        not isinstance(client_ref, str) or len(client_ref) > MAX_CLIENT_REF
    ):
        problems.append(("client_ref", f"must be a string of at most {MAX_CLIENT_REF} chars"))
    if body.get("metadata") is not None and not isinstance(body.get("metadata"), Mapping):
        problems.append(("metadata", "must be an object or null"))
    callback = body.get("callback_url")
    if callback is not None and (
        not isinstance(callback, str) or not callback.startswith(("http://", "https://"))
    ):
        problems.append(("callback_url", "must be an http(s) URL or null"))


def _enum(
    data: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str, problems: Problems
) -> str:
    value = data.get(name, default)
    if value not in allowed:
        problems.append((f"input.{name}", f"must be one of {', '.join(allowed)}"))
        return default
    return str(value)


def _image_urls(data: Mapping[str, Any], problems: Problems) -> None:
    urls = data.get("image_urls")
    if not isinstance(urls, list) or not urls:
        problems.append(("input.image_urls", "is required: a list of image URLs"))
        return
    if len(urls) > MAX_IMAGE_URLS:
        problems.append(("input.image_urls", f"may hold at most {MAX_IMAGE_URLS} images"))
    for url in urls:
        if not _is_media_url(url):
            problems.append(
                ("input.image_urls", f"media URL must use HTTP(S) or data URI: {url!r}")
            )
    mask = data.get("mask_url")
    if mask is not None and not _is_media_url(mask):
        problems.append(("input.mask_url", "media URL must use HTTP(S) or data URI"))


def _is_media_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://", "data:"))


def _size(spec: ModelSpec, value: Any, problems: Problems) -> tuple[int, int, str]:
    fallback = (1024, 1024, "1024x1024")
    if spec.model == "gpt-image-1.5":
        if value == "auto":
            return fallback
        if value in SIZES_15:
            left, _, right = str(value).partition("x")
            return int(left), int(right), str(value)
        problems.append(("input.image_size", f"must be one of {', '.join(SIZES_15)}, auto"))
        return fallback
    if isinstance(value, str):
        if value in PRESETS:
            preset_w, preset_h = PRESETS[value]
            return preset_w, preset_h, f"{preset_w}x{preset_h}"
        if value == "auto" and spec.operation == "edit":
            return fallback
        problems.append(
            ("input.image_size", f"must be {{width, height}} or one of {', '.join(PRESETS)}")
        )
        return fallback
    if isinstance(value, Mapping):
        width: Any = value.get("width")
        height: Any = value.get("height")
        valid = isinstance(width, int) and isinstance(height, int)
        if not valid or isinstance(width, bool) or width <= 0 or height <= 0:
            problems.append(("input.image_size", "width and height must be positive integers"))
            return fallback
        problem = size_problem(width, height, SizeRules())
        if problem is not None:
            problems.append(("input.image_size", problem))
            return fallback
        return width, height, f"{width}x{height}"
    problems.append(("input.image_size", "must be a preset name or {width, height}"))
    return fallback

"""The RunAPI emulator's input checks: the gpt-image contracts, as a 422 would report them.

Follows the generated contracts (G2/G15 `contract_gen.py`, MCP `data/contract.json`) and the
SDK comments on forbidden combinations, and is stricter than RunAPI is known to be in one
way: unknown fields are refused, so a client that sends e.g. `quality` to gpt-image-2 fails
here instead of silently on the real service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagerouter.geometry import RESOLUTIONS, Ratio, Resolution, pixels_for

from .capabilities import ModelCapabilities, RunAPICapabilities

__all__ = ["TaskInput", "image_size", "validate_create"]

_COMMON_FIELDS = frozenset({"model", "prompt", "callback_url"})
_EXTRA_FIELDS: dict[str, frozenset[str]] = {
    "gpt-image-2": frozenset({"aspect_ratio", "output_resolution"}),
    "gpt-image-1.5": frozenset({"aspect_ratio", "quality"}),
}
_RESOLUTIONS: dict[str, Resolution] = {name: name for name in RESOLUTIONS}
# gpt-image-1.5's sizes: OpenAI's classic three.
_GPT_IMAGE_15_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (1024, 1536),
    "3:2": (1536, 1024),
}


@dataclass(frozen=True)
class TaskInput:
    """A create body that passed the checks."""

    model: str
    prompt: str
    aspect_ratio: str | None
    output_resolution: str | None
    quality: str | None
    source_image_urls: tuple[str, ...]
    callback_url: str | None


def validate_create(
    model: str, action: str, body: Mapping[str, Any], capabilities: RunAPICapabilities
) -> tuple[TaskInput | None, dict[str, list[str]]]:
    """The checked input, or None and the per-field errors a 422 carries."""
    errors: dict[str, list[str]] = {}

    def fail(name: str, message: str) -> None:
        errors.setdefault(name, []).append(message)

    caps = capabilities.models[model]
    allowed = _COMMON_FIELDS | _EXTRA_FIELDS[model]
    if action == "edit_image":
        allowed |= {"source_image_urls"}
    for name in body:
        if name not in allowed:
            fail(name, "is not a known field")

    given_model = body.get("model")
    if given_model in (None, ""):
        fail("model", "is required")
    elif given_model != model:
        fail("model", f"must be {model}")

    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        fail("prompt", "is required")

    urls = _source_urls(body, action, capabilities.max_input_images, fail)
    callback = body.get("callback_url")
    if callback is not None and not _is_url(callback):
        fail("callback_url", "must be an http(s) URL")

    aspect_ratio = _enum(body, "aspect_ratio", caps.aspect_ratios, fail)
    resolution: str | None = None
    quality: str | None = None
    if model == "gpt-image-2":
        resolution = _enum(body, "output_resolution", caps.resolutions, fail)
        if "aspect_ratio" not in errors and "output_resolution" not in errors:
            _check_combination(caps, aspect_ratio, resolution, fail)
    else:
        quality = _enum(body, "quality", caps.qualities, fail)
        if "aspect_ratio" not in body:
            fail("aspect_ratio", "is required")
        if "quality" not in body:
            fail("quality", "is required")

    if errors:
        return None, errors
    assert isinstance(prompt, str)
    return (
        TaskInput(
            model=model,
            prompt=prompt,
            aspect_ratio=aspect_ratio,
            output_resolution=resolution,
            quality=quality,
            source_image_urls=urls,
            callback_url=callback if isinstance(callback, str) else None,
        ),
        {},
    )


def image_size(task: TaskInput) -> tuple[int, int]:
    """The pixel size the emulator renders for a task."""
    if task.model == "gpt-image-1.5":
        return _GPT_IMAGE_15_SIZES.get(task.aspect_ratio or "1:1", (1024, 1024))
    if task.aspect_ratio in (None, "auto"):
        return (1024, 1024)
    resolution = _RESOLUTIONS[task.output_resolution or "1k"]
    return pixels_for(Ratio.parse(task.aspect_ratio), resolution)


def _check_combination(
    caps: ModelCapabilities, aspect_ratio: str | None, resolution: str | None, fail: Any
) -> None:
    """The SDK comments' rules: "1:1 cannot be 4k; auto/unset only supports 1k"."""
    resolution = resolution or "1k"
    if aspect_ratio in (None, "auto"):
        if resolution not in caps.auto_resolutions:
            fail("output_resolution", "auto/unset aspect_ratio only supports 1k")
        return
    if caps.forbidden_combo(aspect_ratio, resolution):
        fail("output_resolution", f"{aspect_ratio} cannot be {resolution}")


def _enum(body: Mapping[str, Any], name: str, allowed: tuple[str, ...], fail: Any) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        fail(name, f"must be one of: {', '.join(allowed)}")
        return None
    return value


def _source_urls(
    body: Mapping[str, Any], action: str, limit: int, fail: Any
) -> tuple[str, ...]:
    if action != "edit_image":
        return ()
    urls = body.get("source_image_urls")
    if urls is None or urls == []:
        fail("source_image_urls", "is required")
        return ()
    if not isinstance(urls, list) or not all(_is_url(url) for url in urls):
        fail("source_image_urls", "must be a list of http(s) URLs")
        return ()
    if len(urls) > limit:
        fail("source_image_urls", f"must have at most {limit} items")
    return tuple(urls)


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))

"""RunAPI's limits as data: the shipped capabilities.yaml, read into a typed table.

The router hands `offers()` a capabilities mapping with the user's overrides merged in; this
module layers that mapping over the shipped table (so a partial or empty mapping still works)
and reads it into `RunAPICapabilities`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from imagerouter.provider_kit import deep_merge, load_yaml

__all__ = [
    "ForbiddenCombo",
    "ModelCapabilities",
    "RunAPICapabilities",
    "deep_merge",
    "shipped_capabilities",
]

PACKAGE = "imagerouter_runapi"


@dataclass(frozen=True)
class ForbiddenCombo:
    """An aspect ratio x output resolution pair RunAPI will not make."""

    aspect_ratio: str
    output_resolution: str
    why: str = ""


@dataclass(frozen=True)
class ModelCapabilities:
    """What one model's RunAPI endpoints accept."""

    aspect_ratios: tuple[str, ...]
    resolutions: tuple[str, ...]
    auto_resolutions: tuple[str, ...] = ()
    qualities: tuple[str, ...] = ()
    default_quality: str | None = None
    forbidden: tuple[ForbiddenCombo, ...] = ()

    @property
    def ratios(self) -> tuple[str, ...]:
        """The explicit ratios (without "auto")."""
        return tuple(r for r in self.aspect_ratios if r != "auto")

    @property
    def accepts_auto(self) -> bool:
        return "auto" in self.aspect_ratios

    def forbidden_combo(self, aspect_ratio: str, resolution: str) -> ForbiddenCombo | None:
        for combo in self.forbidden:
            if combo.aspect_ratio == aspect_ratio and combo.output_resolution == resolution:
                return combo
        return None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ModelCapabilities:
        forbidden = tuple(
            ForbiddenCombo(
                aspect_ratio=str(item["aspect_ratio"]),
                output_resolution=str(item["output_resolution"]),
                why=str(item.get("why", "")),
            )
            for item in data.get("forbidden") or ()
        )
        default_quality = data.get("default_quality")
        return cls(
            aspect_ratios=_strings(data.get("aspect_ratios")),
            resolutions=_strings(data.get("resolutions")),
            auto_resolutions=_strings(data.get("auto_resolutions")),
            qualities=_strings(data.get("qualities")),
            default_quality=None if default_quality is None else str(default_quality),
            forbidden=forbidden,
        )


@dataclass(frozen=True)
class RunAPICapabilities:
    """The whole table: shared limits plus one `ModelCapabilities` per model."""

    max_input_images: int
    max_upload_bytes: int
    ratio_tolerance: float
    models: Mapping[str, ModelCapabilities]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RunAPICapabilities:
        """Read `data` laid over the shipped table (missing keys keep the shipped value)."""
        merged = deep_merge(shipped_capabilities(), data)
        models = merged.get("models") or {}
        return cls(
            max_input_images=int(merged["max_input_images"]),
            max_upload_bytes=int(merged["max_upload_bytes"]),
            ratio_tolerance=float(merged["ratio_tolerance"]),
            models={str(k): ModelCapabilities.from_mapping(v) for k, v in models.items()},
        )


@cache
def _shipped() -> dict[str, Any]:
    data = load_yaml(PACKAGE, "capabilities.yaml")
    if not isinstance(data, dict):
        raise ValueError("capabilities.yaml must hold a mapping")
    return data


def shipped_capabilities() -> dict[str, Any]:
    """The shipped capabilities.yaml as a fresh dict (callers may change it)."""
    return copy.deepcopy(_shipped())


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(item) for item in value)

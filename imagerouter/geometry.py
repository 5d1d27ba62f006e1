"""Image geometry: aspect ratios, resolution classes and pixel sizes.

A request names its size in one of three ways (`WxH`, `aspect_ratio` + `resolution`, or
`auto`); providers speak different dialects (RunAPI: a ratio and a 1k/2k/4k class; Runflow:
explicit pixels or a fixed size list). These pure functions are the one place those
translations are defined, so both plugins and the docs agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Resolution = Literal["1k", "2k", "4k"]
RESOLUTIONS: tuple[Resolution, ...] = ("1k", "2k", "4k")

# Target pixel areas: 1k ~ 1024x1024, 2k ~ 2048x2048, 4k ~ 3840x2160 (UHD).
RESOLUTION_AREA: dict[Resolution, int] = {"1k": 1024 * 1024, "2k": 2048 * 2048, "4k": 3840 * 2160}
MAX_EDGE = 3840
# A WxH belongs to the smallest class whose long edge it does not exceed. 1536 keeps
# OpenAI's classic 1536x1024 in 1k; 2560 splits 2k (2048) from 4k (3840).
_CLASS_LONG_EDGE: tuple[tuple[int, Resolution], ...] = ((1536, "1k"), (2560, "2k"))


@dataclass(frozen=True, order=True)
class Ratio:
    """A reduced aspect ratio, e.g. Ratio(16, 9)."""

    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Ratio:
        """Parse `W:H` (positive integers) and reduce it."""
        left, sep, right = text.strip().partition(":")
        if not sep or not left.isdigit() or not right.isdigit():
            raise ValueError(f"{text!r} is not an aspect ratio like 16:9")
        return cls.of(int(left), int(right))

    @classmethod
    def of(cls, width: int, height: int) -> Ratio:
        if width <= 0 or height <= 0:
            raise ValueError("aspect ratio sides must be positive")
        g = math.gcd(width, height)
        return cls(width // g, height // g)

    @property
    def value(self) -> float:
        return self.width / self.height

    def __str__(self) -> str:
        return f"{self.width}:{self.height}"


def parse_size(text: str) -> tuple[int, int]:
    """Parse `WxH` into (width, height)."""
    left, sep, right = text.strip().lower().partition("x")
    if not sep or not left.isdigit() or not right.isdigit():
        raise ValueError(f"{text!r} is not a size like 1536x1024")
    width, height = int(left), int(right)
    if width <= 0 or height <= 0:
        raise ValueError(f"{text!r}: width and height must be positive")
    return width, height


def resolution_class(width: int, height: int) -> Resolution:
    """The 1k/2k/4k class of a pixel size, by its long edge."""
    long_edge = max(width, height)
    for limit, name in _CLASS_LONG_EDGE:
        if long_edge <= limit:
            return name
    return "4k"


def pixels_for(ratio: Ratio, resolution: Resolution, multiple: int = 16) -> tuple[int, int]:
    """A pixel size of about the class's area at this ratio, each side a multiple of `multiple`,
    the long edge at most MAX_EDGE."""
    area = RESOLUTION_AREA[resolution]
    width = math.sqrt(area * ratio.value)
    height = math.sqrt(area / ratio.value)
    scale = min(1.0, MAX_EDGE / max(width, height))
    width, height = width * scale, height * scale
    return _round_to(width, multiple), _round_to(height, multiple)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def round_size(width: int, height: int, multiple: int = 16) -> tuple[int, int]:
    """Round each side to the nearest multiple (providers that need multiples of 16)."""
    return _round_to(width, multiple), _round_to(height, multiple)


def nearest_ratio(
    width: int, height: int, allowed: Iterable[str], tolerance: float = 0.02
) -> str | None:
    """The allowed ratio closest to width:height, if within `tolerance` (relative)."""
    target = width / height
    best: tuple[float, str] | None = None
    for text in allowed:
        try:
            candidate = Ratio.parse(text)
        except ValueError:
            continue
        error = abs(candidate.value - target) / target
        if best is None or error < best[0]:
            best = (error, text)
    if best is None or best[0] > tolerance:
        return None
    return best[1]

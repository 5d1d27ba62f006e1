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

__all__ = [
    "MAX_EDGE",
    "OPENAI_MAX_PIXELS",
    "OPENAI_MIN_PIXELS",
    "RESOLUTIONS",
    "RESOLUTION_AREA",
    "SAME_RATIO_TOLERANCE",
    "SIZE_POLICIES",
    "Ratio",
    "Resolution",
    "SizePolicy",
    "covers",
    "nearest_ratio",
    "openai_size_problem",
    "parse_size",
    "pixels_for",
    "resolution_class",
    "round_size",
    "same_ratio",
    "size_verdict",
]

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


# --- Size policies (issue 12): what a requested WxH promises ---------------------------------

SizePolicy = Literal["exact", "at_least", "nearest"]
SIZE_POLICIES: tuple[SizePolicy, ...] = ("exact", "at_least", "nearest")
# Two sizes have "the same aspect ratio" within 1%: a backend that rounds its sides to
# multiples of 16 (RunAPI's 4:3 at 1k is 1184x880) is still the ratio asked for, and fitting it
# to WxH then crops under 1% from one edge instead of distorting the picture.
SAME_RATIO_TOLERANCE = 0.01


def same_ratio(
    a: tuple[int, int], b: tuple[int, int], tolerance: float = SAME_RATIO_TOLERANCE
) -> bool:
    """Whether two (width, height) sizes have the same aspect ratio, within `tolerance`."""
    first, second = a[0] / a[1], b[0] / b[1]
    return abs(first - second) / second <= tolerance


def covers(delivered: tuple[int, int], wanted: tuple[int, int]) -> bool:
    """Whether `delivered` is at least `wanted` on both sides."""
    return delivered[0] >= wanted[0] and delivered[1] >= wanted[1]


def size_verdict(
    policy: SizePolicy, wanted: tuple[int, int], delivered: tuple[int, int] | None
) -> tuple[bool, tuple[int, int] | None, str | None]:
    """Whether a backend delivering `delivered` may serve a request for `wanted` under `policy`.

    Returns (eligible, resize_to, why). `resize_to` is the size the router fits the download
    to (only under `exact`; None when nothing is to be done). `why` is the reason an offer is
    ineligible, or the note an eligible one carries (a downscale), or None.
    `delivered` None means the backend is trusted to make the size it was asked for: under
    `exact` the download is still fitted to WxH (a no-op when it already is).
    """
    w, h = wanted
    asked = f"{w}x{h}"
    if policy == "nearest" or (delivered is None and policy == "at_least"):
        return True, None, None
    if delivered is None:
        return True, wanted, None
    made = f"{delivered[0]}x{delivered[1]}"
    if delivered == wanted:
        return True, (wanted if policy == "exact" else None), None
    if not same_ratio(delivered, wanted):
        return (
            False,
            None,
            (
                f"makes {made} for {asked}, another aspect ratio; size_policy {policy} needs "
                f"{asked} exactly (size_policy nearest accepts {made})"
                if policy == "exact"
                else f"makes {made} for {asked}, another aspect ratio (size_policy {policy})"
            ),
        )
    if not covers(delivered, wanted):
        return (
            False,
            None,
            (
                f"makes {made} for {asked}, fewer pixels than asked; size_policy {policy} never "
                f"upscales (size_policy nearest accepts {made})"
            ),
        )
    if policy == "at_least":
        return True, None, f"makes {made} for {asked} (size_policy at_least keeps it)"
    return True, wanted, f"{made} downscaled to {asked} after download (Pillow)"


def openai_size_problem(width: int, height: int) -> str | None:
    """OpenAI's rule for a gpt-image WxH, as its 400 words it, or None when the size is valid:
    both sides divisible by 16, long:short at most 3:1, at most 3840 on the long edge, and
    655,360 to 8,294,400 pixels in all (docs/provider-apis openai facts, section 3)."""
    size = f"{width}x{height}"
    if width % 16 or height % 16:
        return f"Invalid size '{size}'. Width and height must both be divisible by 16."
    if max(width, height) > 3 * min(width, height):
        return (
            f"Invalid size '{size}'. The aspect ratio (long side to short side) must be at "
            "most 3:1."
        )
    if max(width, height) > MAX_EDGE:
        return f"Invalid size '{size}'. The longest side must be at most {MAX_EDGE} pixels."
    pixels = width * height
    if not OPENAI_MIN_PIXELS <= pixels <= OPENAI_MAX_PIXELS:
        return (
            f"Invalid size '{size}'. The total number of pixels must be between "
            f"{OPENAI_MIN_PIXELS:,} and {OPENAI_MAX_PIXELS:,} (this size has {pixels:,})."
        )
    return None


OPENAI_MIN_PIXELS = 655_360
OPENAI_MAX_PIXELS = 8_294_400

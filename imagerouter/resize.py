"""Fit a downloaded image to the exact size a request asked for (size policy `exact`).

A backend that cannot make WxH itself (RunAPI takes only a ratio and a 1k/2k/4k class) is
routed to only when it makes the same aspect ratio at no fewer pixels (quoting decides that,
geometry.size_verdict); the router then scales the download down to WxH here, after download
and before the file is saved. Scaling covers the target and crops the centre: the ratio of a
backend's size may differ from WxH by up to 1% (sides rounded to multiples of 16), and a
crop of a few pixels is better than a distorted picture.
"""

from __future__ import annotations

import logging

from PIL import Image, ImageOps

__all__ = ["fit_to"]

log = logging.getLogger("imagerouter.resize")

# Modes LANCZOS resamples directly; the rest (palette, 1-bit, CMYK...) are converted first,
# since Pillow silently falls back to NEAREST for "P" and "1".
_RESAMPLABLE = frozenset({"RGB", "RGBA", "L", "LA"})


def fit_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` scaled (Pillow LANCZOS) and centre-cropped to exactly `size` (width, height).

    Upscaling is never planned (quoting rules it out), but a backend may deliver less than it
    promised; the contract is the saved size, so the image is still fitted and a warning
    says so.
    """
    if image.size == size:
        return image
    width, height = size
    if image.width < width or image.height < height:
        log.warning(
            "the backend delivered %dx%d, smaller than the %dx%d asked for; upscaled to keep "
            "the requested size",
            image.width,
            image.height,
            width,
            height,
        )
    source = image
    if source.mode not in _RESAMPLABLE:
        alpha = source.mode in ("PA", "RGBa", "La") or "transparency" in source.info
        source = source.convert("RGBA" if alpha else "RGB")
    fitted = ImageOps.fit(source, size, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    icc = image.info.get("icc_profile")
    if icc:
        fitted.info["icc_profile"] = icc  # the colours stay those the backend meant
    return fitted

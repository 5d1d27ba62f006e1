"""Placeholder images for the emulators: the prompt drawn on a gradient, at an exact size.

Built from Pillow primitives that run in C (`linear_gradient`, `resize`, `merge`) so a
1024x1024 image renders in tens of milliseconds; a per-pixel Python loop would take seconds.

Every image of a job is distinct (its seed tints the gradient and a label names the image and
the job), so `-n 10` gives ten different files; an edit starts from its input image, fitted to
the output size and washed with the gradient, so the result visibly derives from the input.
"""

from __future__ import annotations

import io
import random
import textwrap
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = ["IMAGE_FORMATS", "MIME_TYPES", "normalize_format", "render_image"]

IMAGE_FORMATS = ("png", "jpeg", "webp")
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_MAX_EDGE = 16384  # WebP's own limit; nothing we emulate is larger


def normalize_format(fmt: str) -> str:
    """`"PNG"`, `"jpg"`, `"image/jpeg"` -> `"png"`, `"jpeg"`, `"jpeg"`; ValueError otherwise."""
    name = fmt.strip().lower().removeprefix("image/")
    name = "jpeg" if name == "jpg" else name
    if name not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r} is not one of png, jpeg, webp")
    return name


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


_TRANSPOSES = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def _gradient(width: int, height: int, seed: int, transparent: bool) -> Image.Image:
    # Built at 256x256 from Pillow's own gradient and exact transposes, then resized once:
    # all in C, no per-pixel Python.
    rng = random.Random(seed)
    base = Image.linear_gradient("L")
    picks = rng.sample(_TRANSPOSES, 3)
    bands = [base if op is None else base.transpose(op) for op in picks]
    mode = "RGB"
    if transparent:
        # 0..255 top to bottom -> clear at the top and bottom edges, opaque in the middle.
        bands.append(base.point(lambda v: 255 - abs(2 * v - 255)))
        mode = "RGBA"
    # A tint per seed: two images whose transposes happen to match still differ in colour.
    for index in range(3):
        low, high = rng.randint(0, 96), rng.randint(160, 255)
        bands[index] = bands[index].point([low + v * (high - low) // 255 for v in range(256)])
    small = Image.merge(mode, bands)
    return small.resize((width, height), Image.Resampling.BILINEAR)


_SOURCE_SHARE = 0.7  # how much of an edit's input shows through the gradient wash


def _from_source(source: bytes, background: Image.Image) -> Image.Image | None:
    """The input image fitted (cropped to cover) to the background's size and washed with it,
    or None when the input cannot be read (then the edit looks like a generation)."""
    try:
        with Image.open(io.BytesIO(source)) as opened:
            opened.draft("RGB", background.size)  # JPEG: decode no larger than needed
            picture = ImageOps.exif_transpose(opened).convert(background.mode)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    fitted = ImageOps.fit(picture, background.size, Image.Resampling.BILINEAR)
    return Image.blend(background, fitted, _SOURCE_SHARE)


def _draw_prompt(image: Image.Image, prompt: str) -> None:
    width, height = image.size
    if width < 16 or height < 16 or not prompt.strip():
        return
    size = max(8, min(width, height) // 16)
    font = _font(size)
    chars_per_line = max(8, int(width * 0.9 / (size * 0.55)))
    max_lines = max(1, int(height * 0.9 / (size * 1.25)))
    lines = textwrap.wrap(prompt.strip(), chars_per_line)[:max_lines]
    draw = ImageDraw.Draw(image)
    draw.multiline_text(
        (width // 20, height // 20),
        "\n".join(lines),
        font=font,
        fill=(255, 255, 255, 255),
        stroke_width=max(1, size // 12),
        stroke_fill=(0, 0, 0, 255),
        spacing=size // 4,
    )


def _draw_label(image: Image.Image, label: str) -> None:
    width, height = image.size
    if width < 32 or height < 32 or not label:
        return
    size = max(8, min(width, height) // 32)
    draw = ImageDraw.Draw(image)
    draw.text(
        (width // 20, height - height // 20 - size),
        label,
        font=_font(size),
        fill=(255, 255, 255, 255),
        stroke_width=max(1, size // 12),
        stroke_fill=(0, 0, 0, 255),
    )


def render_image(
    prompt: str,
    width: int,
    height: int,
    fmt: str,
    *,
    transparent: bool = False,
    seed: int = 0,
    label: str = "",
    source: bytes | None = None,
) -> bytes:
    """Encode a `width` x `height` image of `prompt` on a gradient as png, jpeg or webp.

    With `transparent` (png/webp), the alpha falls from opaque at the middle to clear at the top
    and bottom edges; jpeg has no alpha and ignores it. `label` is written small at the bottom
    (e.g. "image 2 of 4, job 1a2b3c4d"); `source` (an edit's input image, encoded) becomes the
    picture under the wash. The same arguments give the same bytes.
    """
    name = normalize_format(fmt)
    if not (1 <= width <= _MAX_EDGE and 1 <= height <= _MAX_EDGE):
        raise ValueError(f"image size {width}x{height} is outside 1..{_MAX_EDGE} per edge")
    image = _gradient(width, height, seed, transparent and name != "jpeg")
    if source is not None:
        image = _from_source(source, image) or image
    _draw_prompt(image, prompt)
    _draw_label(image, label)
    out = io.BytesIO()
    if name == "png":
        image.save(out, "PNG", compress_level=1)
    elif name == "jpeg":
        image.save(out, "JPEG", quality=85)
    else:
        # Fastest lossless setting: quicker than lossy here, and small on smooth gradients.
        image.save(out, "WEBP", lossless=True, quality=0, method=0)
    return out.getvalue()

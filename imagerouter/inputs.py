"""Edit inputs: read an image from a path or bytes and check it before anything is paid for.

Checks, cheapest first: a path must be a regular file and is read with a byte cap (bounded.py:
`/dev/zero` and FIFOs claim size 0), the magic bytes (PNG, JPEG or WebP only; the file name
and any Content-Type are not trusted), then a full Pillow decode under a pixel limit, so a
truncated file or a decompression bomb fails here with a clear message instead of at the
provider. `check_mask` then holds a mask to its image's size. URLs are not read here: the
caller passes them through to the provider.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

from .bounded import FileReadError, read_bounded
from .errors import InputImageError
from .provider import LoadedImage
from .request import ImageInput

__all__ = [
    "EXTENSIONS",
    "MIME_TYPES",
    "ImageCheckError",
    "ImageFormat",
    "check_magic",
    "check_mask",
    "decode_image",
    "human_bytes",
    "load_input",
    "sniff_format",
]

ImageFormat = Literal["png", "jpeg", "webp"]
MIME_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_PIL_FORMATS: dict[str, str] = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
ALLOWED = "PNG, JPEG or WebP"

# Formats people commonly try, named in the error so they know what they passed.
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
)
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")


class ImageCheckError(ValueError):
    """An image failed a check; the message says what is wrong (without naming the source).

    `reason` is one of "empty", "not_an_image", "too_many_pixels", "undecodable".
    """

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


def sniff_format(data: bytes) -> ImageFormat | None:
    """The image format from the magic bytes, or None if it is not PNG, JPEG or WebP."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _describe_other(data: bytes) -> str:
    head = data[:16].lstrip()
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return f"a {name} file"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "a HEIC/AVIF/MP4 file"
    return "not a recognized image"


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'; for messages."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # pragma: no cover


def check_magic(data: bytes) -> ImageFormat:
    """The format from the magic bytes; ImageCheckError naming what it is otherwise."""
    if not data:
        raise ImageCheckError("is empty (0 bytes)", "empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageCheckError(
            f"is {_describe_other(data)}; allowed formats: {ALLOWED}", "not_an_image"
        )
    return fmt


def decode_image(
    data: bytes | Path, fmt: str, *, max_pixels: int, verify_only: bool = False
) -> Image.Image:
    """Decode `data` (bytes, or a file) fully as `fmt` (png/jpeg/webp) under a pixel limit.

    Pillow reads the header first, so the limit is enforced before any pixel is decoded;
    `load()` then catches truncated and corrupt files. With `verify_only`, `verify()` checks
    the file's structure instead (for PNG: every chunk's CRC up to the end marker) without
    decoding pixels, several times faster; the image returned is then not usable for pixels.
    Pillow's DecompressionBombWarning is turned into an error here, and only here.
    """
    pil_format = _PIL_FORMATS[fmt]
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source, formats=[pil_format])
            width, height = image.size
            if width * height > max_pixels:
                raise ImageCheckError(
                    f"is {width}x{height} = {width * height:,} pixels, over the limit of "
                    f"{max_pixels:,} pixels (a possible decompression bomb)",
                    "too_many_pixels",
                )
            if verify_only:
                image.verify()
            else:
                image.load()
    except ImageCheckError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageCheckError(f"is too large to decode safely: {exc}", "too_many_pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated"),
        # SyntaxError (bad PNG chunks) or ValueError, depending on the decoder.
        raise ImageCheckError(
            f"looks like {fmt.upper()} but cannot be decoded (truncated or corrupt?): {exc}",
            "undecodable",
        ) from None
    return image


def _filename(image: ImageInput, fmt: str) -> str:
    ext = EXTENSIONS[fmt]
    if image.kind == "path" and image.path is not None:
        stem = image.path.stem or "image"
    elif _SAFE_LABEL.match(image.label or ""):
        stem = Path(image.label).stem or "image"
    else:
        stem = "image"
    return f"{stem}.{ext}"


def _read_path(path: Path, name: str, max_bytes: int) -> bytes:
    # A capped read of a regular file only: /dev/zero or a FIFO report size 0 and never end.
    try:
        return read_bounded(path, max_bytes)
    except FileReadError as exc:
        if exc.reason == "too_large":
            detail = (
                _too_big(exc.size, max_bytes)
                if exc.size is not None
                else f"is over the limit of {human_bytes(max_bytes)} ({max_bytes:,} bytes)"
            )
            raise InputImageError(name, detail) from None
        if exc.reason == "not_regular":
            raise InputImageError(name, f"{exc}; give an image file") from None
        raise InputImageError(name, str(exc)) from None


def _too_big(size: int, max_bytes: int) -> str:
    return (
        f"is {human_bytes(size)} ({size:,} bytes), over the limit of {human_bytes(max_bytes)} "
        f"({max_bytes:,} bytes)"
    )


def load_input(image: ImageInput, *, max_bytes: int, max_pixels: int = 64_000_000) -> LoadedImage:
    """Read and check one edit input (a path or bytes). Raises InputImageError naming it.

    URL inputs raise ValueError: they are passed through to the provider by the caller.
    """
    name = image.name
    if image.kind == "url":
        raise ValueError(f"{name}: URL inputs are passed through to the provider, not loaded")
    if image.kind == "path":
        if image.path is None:
            raise InputImageError(name, "a path input without a path")
        data = _read_path(image.path, name, max_bytes)
    else:
        if image.data is None:
            raise InputImageError(name, "a bytes input without data")
        data = image.data
    if len(data) > max_bytes:
        raise InputImageError(name, _too_big(len(data), max_bytes))
    try:
        fmt = check_magic(data)
        decoded = decode_image(data, fmt, max_pixels=max_pixels)
    except ImageCheckError as exc:
        raise InputImageError(name, str(exc)) from None
    width, height = decoded.size
    decoded.close()
    return LoadedImage(
        name=name,
        data=data,
        mime_type=MIME_TYPES[fmt],
        filename=_filename(image, fmt),
        width=width,
        height=height,
    )


def check_mask(images: Sequence[LoadedImage | str], mask: LoadedImage | str | None) -> None:
    """InputImageError if a local mask is not the size of the first image, which it masks
    (providers refuse it only after the job is paid for, or edit the wrong region). URL
    inputs are not read here, so a URL on either side is left to the provider."""
    if mask is None or isinstance(mask, str) or not images or isinstance(images[0], str):
        return
    first = images[0]
    if (mask.width, mask.height) != (first.width, first.height):
        raise InputImageError(
            mask.name,
            f"the mask is {mask.width}x{mask.height} but the image it masks ({first.name}) is "
            f"{first.width}x{first.height}; a mask must be the same size as the first image",
        )

"""Edit inputs are read and checked (size, magic bytes, full decode) before anything is paid."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from imagerouter.emulation import render_image
from imagerouter.errors import InputImageError
from imagerouter.inputs import load_input, sniff_format
from imagerouter.request import ImageInput


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("fmt", "mime", "ext"),
    [("png", "image/png", "png"), ("jpeg", "image/jpeg", "jpg"), ("webp", "image/webp", "webp")],
)
def test_load_each_format_from_a_path(tmp_path: Path, fmt: str, mime: str, ext: str) -> None:
    # The extension on disk is wrong on purpose: the magic bytes decide.
    path = tmp_path / "photo.bin"
    data = render_image("input", 40, 30, fmt)
    path.write_bytes(data)
    loaded = load_input(ImageInput.coerce(path), max_bytes=10_000_000)
    assert sniff_format(data) == fmt
    assert loaded.mime_type == mime
    assert loaded.filename == f"photo.{ext}"
    assert (loaded.width, loaded.height) == (40, 30)
    assert loaded.data == data
    assert loaded.name == str(path)
    assert loaded.size_bytes == len(data)


def test_load_bytes_input() -> None:
    data = render_image("bytes", 16, 8, "webp", transparent=True)
    loaded = load_input(ImageInput.coerce(data), max_bytes=1_000_000)
    assert (loaded.mime_type, loaded.filename, loaded.width, loaded.height) == (
        "image/webp",
        "image.webp",
        16,
        8,
    )
    labelled = load_input(ImageInput.coerce(data, label="mask.png"), max_bytes=1_000_000)
    assert labelled.filename == "mask.webp"
    assert labelled.name == "mask.png"


def test_sniff_format_rejects_other_bytes() -> None:
    assert sniff_format(b"") is None
    assert sniff_format(b"GIF89a....") is None
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVE") is None
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(InputImageError, match=r"nope\.png: file not found") as info:
        load_input(ImageInput.coerce(missing), max_bytes=100)
    assert info.value.source == str(missing)


def test_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="is a directory"):
        load_input(ImageInput.coerce(tmp_path), max_bytes=100)


def test_size_cap_names_size_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(render_image("big", 64, 64, "png"))
    size = path.stat().st_size
    with pytest.raises(InputImageError) as info:
        load_input(ImageInput.coerce(path), max_bytes=100)
    message = str(info.value)
    assert size > 100
    assert f"{size:,} bytes" in message and "(100 bytes)" in message and "limit" in message
    with pytest.raises(InputImageError, match="over the limit"):
        load_input(ImageInput.coerce(path.read_bytes()), max_bytes=100)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"GIF89a" + b"\x00" * 40, "is a GIF file; allowed formats: PNG, JPEG or WebP"),
        (b"%PDF-1.7 ...", "is a PDF file"),
        (b"hello world, not an image", "not a recognized image; allowed formats"),
        (b"", "is empty"),
    ],
)
def test_wrong_magic_bytes_say_what_is_allowed(data: bytes, fragment: str) -> None:
    with pytest.raises(InputImageError, match=fragment):
        load_input(ImageInput.coerce(data, label="upload"), max_bytes=1000)


def test_truncated_image_fails_to_decode() -> None:
    data = render_image("cut", 64, 64, "png")
    with pytest.raises(InputImageError, match="cannot be decoded"):
        load_input(ImageInput.coerce(data[: len(data) // 2]), max_bytes=1_000_000)
    jpeg = render_image("cut", 64, 64, "jpeg")
    with pytest.raises(InputImageError, match="cannot be decoded"):
        load_input(ImageInput.coerce(jpeg[: len(jpeg) // 2]), max_bytes=1_000_000)


def test_decompression_bomb_is_refused() -> None:
    bomb = _png_claiming(100_000, 100_000)
    assert len(bomb) < 200
    # Over twice Pillow's limit: Pillow raises DecompressionBombError itself.
    with pytest.raises(InputImageError, match="too large to decode safely"):
        load_input(ImageInput.coerce(bomb), max_bytes=1_000_000)
    # Just over Pillow's limit: its warning is turned into an error.
    with pytest.raises(InputImageError, match="too large to decode safely"):
        load_input(ImageInput.coerce(_png_claiming(10_000, 9_000)), max_bytes=1_000_000)
    # Under Pillow's limit but over ours (64 MP by default).
    with pytest.raises(InputImageError, match="9000x8000 = 72,000,000 pixels"):
        load_input(ImageInput.coerce(_png_claiming(9_000, 8_000)), max_bytes=1_000_000)
    # Our own, tighter pixel limit applies before Pillow's.
    with pytest.raises(InputImageError, match="64x64 = 4,096 pixels, over the limit of 1,000"):
        load_input(
            ImageInput.coerce(render_image("x", 64, 64, "png")), max_bytes=10**6, max_pixels=1000
        )


def test_url_inputs_are_not_loaded() -> None:
    with pytest.raises(ValueError, match="passed through"):
        load_input(ImageInput.coerce("https://example.com/a.png"), max_bytes=1000)


def test_loaded_image_repr_hides_bytes() -> None:
    data = render_image("r", 8, 8, "png")
    loaded = load_input(ImageInput.coerce(data), max_bytes=10_000)
    assert "data=" not in repr(loaded)
    Image.open(io.BytesIO(loaded.data)).verify()

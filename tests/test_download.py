"""Downloading results over real loopback sockets: checks, conversion, redirects, atomicity."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from imagerouter.download import download_image, is_retryable
from imagerouter.emulation import EmulatorServer, drop_connection, render_image
from imagerouter.errors import DownloadFailedError

SECRET = "sk-download-secret-1234"
AUTH = {"Authorization": f"Bearer {SECRET}", "X-API-Key": SECRET}
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

# Filled in once both servers run, so routes on one can point at the other.
URLS: dict[str, str] = {}
SEEN_BY_OTHER: list[dict[str, str]] = []
SEEN_BY_ORIGIN: list[dict[str, str]] = []


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


async def _image(request: Request) -> Response:
    fmt = request.path_params["fmt"]
    transparent = request.query_params.get("alpha") == "1"
    return Response(render_image("dl", 48, 32, fmt, transparent=transparent), media_type=MIME[fmt])


async def _status(request: Request) -> Response:
    return Response(b"nope", status_code=int(request.path_params["code"]))


async def _not_an_image(request: Request) -> Response:
    return Response(b"<html>expired</html>", media_type="image/png")


async def _huge_declared(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"\x89PNG\r\n\x1a\n"
        await asyncio.sleep(30)  # a client that read on would hang here

    return StreamingResponse(body(), headers={"content-length": str(10**9)})


async def _endless(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield render_image("x", 8, 8, "png")
        for _ in range(200):
            yield b"\x00" * 65536

    return StreamingResponse(body(), media_type="image/png")  # chunked, no Content-Length


async def _truncated(request: Request) -> Response:
    data = render_image("cut", 256, 256, "png")
    return Response(data[: len(data) // 2], media_type="image/png")


async def _bomb(request: Request) -> Response:
    return Response(_png_claiming(100_000, 100_000), media_type="image/png")


async def _reset(request: Request) -> Response:
    await drop_connection(request)
    return Response(b"")


async def _hops(request: Request) -> Response:
    left = int(request.path_params["n"])
    if left == 0:
        return Response(render_image("hops", 8, 8, "png"), media_type="image/png")
    return RedirectResponse(f"/hops/{left - 1}", status_code=302)


async def _to_other(request: Request) -> Response:
    return RedirectResponse(f"{URLS['other']}/record", status_code=307)


async def _to_same(request: Request) -> Response:
    return RedirectResponse("/record", status_code=301)


async def _to_ftp(request: Request) -> Response:
    return RedirectResponse("ftp://127.0.0.1/x.png", status_code=302)


def _recorder(seen: list[dict[str, str]]) -> Any:
    async def record(request: Request) -> Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return Response(render_image("rec", 8, 8, "png"), media_type="image/png")

    return record


ORIGIN_APP = Starlette(
    routes=[
        Route("/img/{fmt}", _image),
        Route("/status/{code:int}", _status),
        Route("/not-an-image", _not_an_image),
        Route("/huge-declared", _huge_declared),
        Route("/endless", _endless),
        Route("/truncated", _truncated),
        Route("/bomb", _bomb),
        Route("/reset", _reset),
        Route("/hops/{n:int}", _hops),
        Route("/to-other", _to_other),
        Route("/to-same", _to_same),
        Route("/to-ftp", _to_ftp),
        Route("/record", _recorder(SEEN_BY_ORIGIN)),
    ]
)
OTHER_APP = Starlette(routes=[Route("/record", _recorder(SEEN_BY_OTHER))])


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with EmulatorServer(ORIGIN_APP) as one, EmulatorServer(OTHER_APP) as other:
        URLS["origin"], URLS["other"] = one.url, other.url
        yield one.url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        yield client


async def _fail(http: httpx.AsyncClient, url: str, dest: Path, **kw: Any) -> DownloadFailedError:
    with pytest.raises(DownloadFailedError) as info:
        await download_image(http, url, dest, "out", provider="runapi", **kw)
    error = info.value
    assert error.accepted == "yes" and error.provider == "runapi" and error.url == url
    assert url in str(error) and "expire" in str(error)
    return error


def _files(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


@pytest.mark.parametrize(("fmt", "ext"), [("png", "png"), ("jpeg", "jpg"), ("webp", "webp")])
async def test_downloads_each_format(
    origin: str, http: httpx.AsyncClient, tmp_path: Path, fmt: str, ext: str
) -> None:
    dest = tmp_path / "nested" / "out"  # created on demand
    url = f"{origin}/img/{fmt}"
    saved = await download_image(http, url, dest, "req-1", provider="runapi")
    assert saved.path == dest / f"req-1.{ext}"
    data = saved.path.read_bytes()
    assert data == render_image("dl", 48, 32, fmt)  # the bytes, untouched
    assert saved.sha256 == hashlib.sha256(data).hexdigest()
    assert (saved.width, saved.height, saved.format) == (48, 32, fmt)
    assert saved.size_bytes == len(data) and saved.source_url == url
    assert saved.converted_from is None
    assert _files(dest) == [f"req-1.{ext}"]  # no temp file left behind


async def test_converts_transparent_png_to_jpeg(
    origin: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    saved = await download_image(
        http, f"{origin}/img/png?alpha=1", tmp_path, "c", provider="runflow", convert_to="jpg"
    )
    assert saved.path.name == "c.jpg" and saved.format == "jpeg"
    assert saved.converted_from == "png"
    image = Image.open(saved.path)
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (48, 32)
    # The clear top edge was flattened onto white, not black.
    assert min(image.getpixel((24, 0))) > 200  # type: ignore[arg-type]
    assert saved.sha256 == hashlib.sha256(saved.path.read_bytes()).hexdigest()
    assert saved.size_bytes == saved.path.stat().st_size


async def test_converts_png_to_webp_keeping_alpha(
    origin: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    saved = await download_image(
        http, f"{origin}/img/png?alpha=1", tmp_path, "w", provider="runflow", convert_to="webp"
    )
    image = Image.open(saved.path)
    assert image.format == "WEBP" and image.mode == "RGBA"
    assert (saved.format, saved.converted_from) == ("webp", "png")
    same = await download_image(
        http, f"{origin}/img/png", tmp_path, "p", provider="runflow", convert_to="png"
    )
    assert same.converted_from is None and same.path.name == "p.png"


async def test_http_error_names_status_url_and_expiry(
    origin: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    error = await _fail(
        http, f"{origin}/status/404", tmp_path, headers=AUTH, url_expires_at=expires
    )
    assert error.status_code == 404 and error.code == "http_status"
    assert "HTTP 404" in str(error) and "2030-01-02T03:04:05+00:00" in str(error)
    assert SECRET not in str(error) and SECRET not in repr(error)
    assert not is_retryable(error)
    error = await _fail(http, f"{origin}/status/503", tmp_path)
    assert error.status_code == 503 and is_retryable(error)
    assert _files(tmp_path) == []


async def test_bad_magic_bytes(origin: str, http: httpx.AsyncClient, tmp_path: Path) -> None:
    error = await _fail(http, f"{origin}/not-an-image", tmp_path)
    assert error.code == "not_an_image" and "PNG, JPEG or WebP" in str(error)
    assert not is_retryable(error)
    assert _files(tmp_path) == []


async def test_oversize_by_content_length_is_rejected_before_reading(
    origin: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    # The server would stall after 8 bytes: only an early rejection finishes in time.
    error = await asyncio.wait_for(
        _fail(http, f"{origin}/huge-declared", tmp_path, max_bytes=1_000_000), timeout=3
    )
    assert error.code == "too_large" and "953.7 MiB" in str(error)
    assert _files(tmp_path) == []


async def test_oversize_while_streaming_without_content_length(
    origin: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    error = await _fail(http, f"{origin}/endless", tmp_path, max_bytes=300_000)
    assert error.code == "too_large" and "larger than the download limit" in str(error)
    assert _files(tmp_path) == []


async def test_truncated_image(origin: str, http: httpx.AsyncClient, tmp_path: Path) -> None:
    error = await _fail(http, f"{origin}/truncated", tmp_path)
    assert error.code == "undecodable" and "cannot be decoded" in str(error)
    assert is_retryable(error)
    assert _files(tmp_path) == []


async def test_decompression_bomb(origin: str, http: httpx.AsyncClient, tmp_path: Path) -> None:
    error = await _fail(http, f"{origin}/bomb", tmp_path)
    assert error.code == "too_many_pixels"
    # A tighter limit of our own applies too.
    small = await _fail(http, f"{origin}/img/png", tmp_path, max_pixels=100)
    assert small.code == "too_many_pixels" and "48x32" in str(small)
    assert _files(tmp_path) == []


async def test_dropped_connection_is_a_retryable_network_error(
    origin: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    error = await _fail(http, f"{origin}/reset", tmp_path, headers=AUTH)
    assert error.code == "network" and is_retryable(error)
    assert SECRET not in str(error)


async def test_cross_origin_redirect_drops_our_headers(
    origin: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    SEEN_BY_OTHER.clear()
    saved = await download_image(
        http, f"{origin}/to-other", tmp_path, "x", provider="runapi", headers=AUTH
    )
    assert saved.width == 8
    assert len(SEEN_BY_OTHER) == 1
    assert "authorization" not in SEEN_BY_OTHER[0]
    assert "x-api-key" not in SEEN_BY_OTHER[0]
    assert SECRET not in str(SEEN_BY_OTHER[0])


async def test_same_origin_redirect_keeps_our_headers(
    origin: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    SEEN_BY_ORIGIN.clear()
    await download_image(http, f"{origin}/to-same", tmp_path, "x", provider="runapi", headers=AUTH)
    assert SEEN_BY_ORIGIN[0]["authorization"] == f"Bearer {SECRET}"
    assert SEEN_BY_ORIGIN[0]["x-api-key"] == SECRET


async def test_redirect_limit(origin: str, http: httpx.AsyncClient, tmp_path: Path) -> None:
    saved = await download_image(http, f"{origin}/hops/3", tmp_path, "ok", provider="runapi")
    assert saved.path.exists()
    error = await _fail(http, f"{origin}/hops/4", tmp_path)
    assert error.code == "redirects" and "more than 3 redirects" in str(error)


async def test_only_http_urls(origin: str, http: httpx.AsyncClient, tmp_path: Path) -> None:
    for url in ("ftp://127.0.0.1/a.png", "file:///etc/passwd", f"{origin}/to-ftp"):
        error = await _fail(http, url, tmp_path)
        assert error.code == "bad_url" and "http(s)" in str(error)
    assert _files(tmp_path) == []


async def test_failed_download_leaves_an_existing_file_intact(
    origin: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    good = await download_image(http, f"{origin}/img/png", tmp_path, "out", provider="runapi")
    before = good.path.read_bytes()
    await _fail(http, f"{origin}/truncated", tmp_path)
    assert good.path.read_bytes() == before
    assert _files(tmp_path) == ["out.png"]


async def test_unwritable_destination(origin: str, http: httpx.AsyncClient, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    error = await _fail(http, f"{origin}/img/png", blocker / "sub")
    assert error.code == "write_failed" and "writing" in str(error)


async def test_argument_errors(http: httpx.AsyncClient, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="convert_to"):
        await download_image(
            http, "http://127.0.0.1/", tmp_path, "x", provider="p", convert_to="gif"
        )
    with pytest.raises(ValueError, match="stem"):
        await download_image(http, "http://127.0.0.1/", tmp_path, "../x", provider="p")


def test_decoded_jpeg_bytes_are_valid() -> None:
    # Guards the helper the tests above compare against.
    Image.open(io.BytesIO(render_image("dl", 48, 32, "jpeg"))).verify()

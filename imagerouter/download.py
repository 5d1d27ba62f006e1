"""Download a finished job's image to disk: capped, checked, optionally converted, atomic.

The job is already paid for when this runs, so every failure says where the image still is
(the provider's URL, which expires). The download is streamed with a byte cap, redirects are
followed by hand (at most 3) so credentials never travel to another origin, the bytes must be
PNG/JPEG/WebP by their magic bytes and decode fully under a pixel limit, and the file appears
under its final name only once it is complete (temp file, fsync, rename).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from PIL import Image

from .errors import DownloadFailedError
from .inputs import EXTENSIONS, ImageCheckError, check_magic, decode_image, human_bytes
from .outputs import file_mode
from .resize import fit_to
from .result import SavedImage
from .urls import HostPolicy, strip_credentials

__all__ = ["MAX_REDIRECTS", "RETRYABLE_CODES", "adopt_image", "download_image", "is_retryable"]

MAX_REDIRECTS = 3
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK = 64 * 1024
_HEAD = 64  # bytes kept for the magic-number check

# `DownloadFailedError.code` values worth another try; the rest fail the same way again.
# "undecodable" is here because a connection cut mid-body without a Content-Length looks
# exactly like a truncated file.
RETRYABLE_CODES = frozenset({"network", "undecodable"})
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_retryable(error: DownloadFailedError) -> bool:
    """Whether trying the same download again can succeed (network trouble, 5xx, 429)."""
    if error.code == "http_status":
        return error.status_code in _RETRYABLE_STATUS
    return error.code in RETRYABLE_CODES


def _normalize_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    name = fmt.strip().lower()
    name = "jpeg" if name == "jpg" else name
    if name not in EXTENSIONS:
        raise ValueError(f"convert_to must be png, jpeg or webp, not {fmt!r}")
    return name


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme))


class _Failure:
    """Builds the DownloadFailedError for one download, always naming where the image is."""

    def __init__(self, url: str, provider: str, expires_at: datetime | None) -> None:
        self.url = strip_credentials(url)  # the message is logged and stored
        self.provider = provider
        self.expires_at = expires_at

    def __call__(
        self, what: str, *, code: str, status_code: int | None = None
    ) -> DownloadFailedError:
        expiry = (
            f"this one expires at {self.expires_at.isoformat()}"
            if self.expires_at is not None
            else "it will expire"
        )
        message = (
            f"the image could not be saved: {what}. It is still at {self.url} "
            f"(provider result URLs expire; {expiry}), so download it from there soon"
        )
        return DownloadFailedError(
            message,
            provider=self.provider,
            url=self.url,
            accepted="yes",
            status_code=status_code,
            code=code,
        )


@dataclass
class _Fetched:
    """A download on disk, not yet checked: a temp file beside its final place."""

    temp: Path
    sha256: str
    size: int
    head: bytes  # the first bytes, for the magic-number check


async def _fetch(
    http: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str] | None,
    max_bytes: int,
    fail: _Failure,
    dest_dir: Path,
    stem: str,
    hosts: HostPolicy | None,
) -> _Fetched:
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise fail(f"the URL is not valid ({exc})", code="bad_url") from None
    if current.scheme not in _DEFAULT_PORTS:
        raise fail(
            f"only http(s) URLs are downloaded, not {current.scheme or 'scheme-less'} URLs",
            code="bad_url",
        )
    await _check_host(hosts, current, fail)
    origin = _origin(current)
    send_headers = dict(headers or {})
    for hop in range(MAX_REDIRECTS + 1):
        try:
            async with http.stream(
                "GET", current, headers=send_headers, follow_redirects=False
            ) as response:
                if response.is_redirect:
                    if hop == MAX_REDIRECTS:
                        raise fail(f"more than {MAX_REDIRECTS} redirects", code="redirects")
                    target = current.join(response.headers["location"])
                    if target.scheme not in _DEFAULT_PORTS:
                        raise fail(
                            f"a redirect led to a {target.scheme or 'scheme-less'} URL, "
                            "which is not http(s)",
                            code="bad_url",
                        )
                    await _check_host(hosts, target, fail)
                    if _origin(target) != origin:
                        # Our headers may hold the provider's key: never send them elsewhere.
                        send_headers = {}
                    current = target
                    continue
                if not response.is_success:
                    raise fail(
                        f"the server answered HTTP {response.status_code}",
                        code="http_status",
                        status_code=response.status_code,
                    )
                return await _stream_to_temp(response, max_bytes, fail, dest_dir, stem)
        except httpx.TimeoutException as exc:
            raise fail(f"the download timed out ({type(exc).__name__})", code="network") from None
        except httpx.HTTPError as exc:
            detail = str(exc) or type(exc).__name__
            raise fail(f"network error: {detail}", code="network") from None
        except httpx.InvalidURL as exc:
            raise fail(f"a redirect led to an invalid URL ({exc})", code="bad_url") from None
    raise AssertionError("unreachable")  # pragma: no cover


async def _check_host(hosts: HostPolicy | None, url: httpx.URL, fail: _Failure) -> None:
    # Every hop is checked, so a redirect cannot lead an allowed host to an internal one.
    # (httpx resolves the name again to connect: a DNS answer that changes in between is not
    # caught here; the allowlist of provider domains is the first line.)
    refusal = await hosts.refusal_after_lookup(str(url)) if hosts is not None else None
    if refusal is not None:
        raise fail(f"refused to fetch it: {refusal}", code="host_not_allowed")


async def _stream_to_temp(
    response: httpx.Response, max_bytes: int, fail: _Failure, dest_dir: Path, stem: str
) -> _Fetched:
    """Write the body to a temp file as it arrives, hashing it on the way: an image is never
    held whole in memory, however many downloads run at once."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise fail(
            f"the server announced {human_bytes(int(declared))}, over the download limit of "
            f"{human_bytes(max_bytes)}",
            code="too_large",
        )
    try:
        fd, temp_name = await asyncio.to_thread(_open_temp, dest_dir, stem)
    except OSError as exc:
        raise fail(
            f"writing to {dest_dir} failed: {exc.strerror or exc}", code="write_failed"
        ) from None
    temp = Path(temp_name)
    digest = hashlib.sha256()
    size = 0
    head = b""
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in response.aiter_bytes(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise fail(
                        f"the image is larger than the download limit of {human_bytes(max_bytes)}",
                        code="too_large",
                    )
                if len(head) < _HEAD:
                    head += chunk[: _HEAD - len(head)]
                digest.update(chunk)
                handle.write(chunk)
    except BaseException:
        _discard(temp)
        raise
    return _Fetched(temp, digest.hexdigest(), size, head)


def _open_temp(dest_dir: Path, stem: str) -> tuple[int, str]:
    dest_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=dest_dir)


def _discard(temp: Path) -> None:
    with contextlib.suppress(OSError):
        temp.unlink()


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def _convert(image: Image.Image, target: str) -> bytes:
    icc = image.info.get("icc_profile")
    out = io.BytesIO()
    if target == "jpeg":
        if _has_alpha(image):
            # JPEG has no alpha: flatten onto white rather than letting clear pixels go black.
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
        else:
            flat = image.convert("RGB")
        flat.save(out, "JPEG", quality=95, icc_profile=icc)
    else:
        converted = image.convert("RGBA" if _has_alpha(image) else "RGB")
        if target == "png":
            converted.save(out, "PNG", icc_profile=icc)
        else:
            converted.save(out, "WEBP", quality=95, icc_profile=icc)
    return out.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    _durable_replace(Path(temp_name), path)


def _durable_replace(temp: Path, path: Path) -> None:
    """fsync the finished temp file, rename it into place, then make the rename durable."""
    try:
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        if os.name != "nt":
            os.chmod(temp, file_mode())
        os.replace(temp, path)
    except BaseException:
        _discard(temp)
        raise
    # Make the rename itself durable; not possible on every platform, so best effort.
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _save(
    fetched: _Fetched,
    url: str,
    dest_dir: Path,
    stem: str,
    max_pixels: int,
    target: str | None,
    fail: _Failure,
    resize_to: tuple[int, int] | None = None,
) -> SavedImage:
    convert = target is not None
    try:
        fmt = check_magic(fetched.head)
        convert = target is not None and target != fmt
        # A PNG kept as it is only needs its structure checked (every chunk's CRC), not a
        # full decode; anything converted, resized or not PNG is decoded in full.
        verify_only = fmt == "png" and not convert and resize_to is None
        image = decode_image(fetched.temp, fmt, max_pixels=max_pixels, verify_only=verify_only)
    except ImageCheckError as exc:
        raise fail(f"the downloaded file {exc}", code=exc.reason) from None
    with image:
        if resize_to is not None and image.size != resize_to:
            # Size policy `exact`: fitted to WxH here, then re-encoded (resize.py says why).
            image = fit_to(image, resize_to)
            target, convert = target or fmt, True
        width, height = image.size
        if not convert:
            path = dest_dir / f"{stem}.{EXTENSIONS[fmt]}"
            try:
                _durable_replace(fetched.temp, path)
            except OSError as exc:
                raise fail(
                    f"writing {path} failed: {exc.strerror or exc}", code="write_failed"
                ) from None
            return SavedImage(
                path=path,
                width=width,
                height=height,
                format=fmt,
                sha256=fetched.sha256,
                source_url=strip_credentials(url),
                size_bytes=fetched.size,
            )
        assert target is not None
        try:
            out_data = _convert(image, target)
        except (OSError, ValueError) as exc:
            raise fail(
                f"converting {fmt} to {target} failed: {exc}", code="convert_failed"
            ) from None
    path = dest_dir / f"{stem}.{EXTENSIONS[target]}"
    try:
        _write_atomically(path, out_data)
    except OSError as exc:
        raise fail(f"writing {path} failed: {exc.strerror or exc}", code="write_failed") from None
    return SavedImage(
        path=path,
        width=width,
        height=height,
        format=target,
        sha256=hashlib.sha256(out_data).hexdigest(),
        source_url=strip_credentials(url),
        size_bytes=len(out_data),
        converted_from=fmt if fmt != target else None,  # None: only resized
    )


async def download_image(
    http: httpx.AsyncClient,
    url: str,
    dest_dir: Path,
    stem: str,
    *,
    provider: str,
    max_bytes: int = 50 * 2**20,
    max_pixels: int = 64_000_000,
    convert_to: str | None = None,
    headers: Mapping[str, str] | None = None,
    url_expires_at: datetime | None = None,
    hosts: HostPolicy | None = None,
    resize_to: tuple[int, int] | None = None,
) -> SavedImage:
    """Download `url` to `dest_dir/{stem}.{ext}` and return what was saved.

    `headers` (e.g. the provider's auth) go only to the URL's own origin. `convert_to`
    (png/jpeg/webp) re-encodes locally when the provider sent another format. Every failure
    raises DownloadFailedError (accepted="yes", `code` says which check failed; see
    `is_retryable`), whose message names the URL the image can still be fetched from.
    `hosts` limits which hosts are fetched, the first URL and every redirect (None: the
    caller vouches for the URL; the router always passes the provider's policy).
    `resize_to` (width, height): the saved image is fitted to exactly that size (resize.py).
    """
    target = _normalize_format(convert_to)
    if not stem or stem in (".", "..") or Path(stem).name != stem:
        raise ValueError(f"stem must be a plain file name without directories, not {stem!r}")
    fail = _Failure(url, provider, url_expires_at)
    dest = Path(dest_dir)
    fetched = await _fetch(http, url, headers, max_bytes, fail, dest, stem, hosts)
    # Checking, converting and fsyncing take milliseconds: keep them off the event loop.
    try:
        return await asyncio.to_thread(
            _save, fetched, url, dest, stem, max_pixels, target, fail, resize_to
        )
    finally:
        _discard(fetched.temp)


def _fetched_from_file(temp: Path) -> _Fetched:
    digest = hashlib.sha256()
    size = 0
    with open(temp, "rb") as handle:
        head = handle.read(_HEAD)
        handle.seek(0)
        while chunk := handle.read(_CHUNK):
            size += len(chunk)
            digest.update(chunk)
    return _Fetched(temp, digest.hexdigest(), size, head)


async def adopt_image(
    temp: str | Path,
    dest_dir: Path,
    stem: str,
    *,
    provider: str,
    source: str,
    max_bytes: int = 50 * 2**20,
    max_pixels: int = 64_000_000,
    convert_to: str | None = None,
    resize_to: tuple[int, int] | None = None,
) -> SavedImage:
    """Save an image a provider client already wrote to `temp` (decoded from its answer, as
    OpenAI's b64_json): the same checks and atomic rename as a download. `temp` is consumed."""
    target = _normalize_format(convert_to)
    if not stem or stem in (".", "..") or Path(stem).name != stem:
        raise ValueError(f"stem must be a plain file name without directories, not {stem!r}")
    fail = _Failure(source, provider, None)
    dest = Path(dest_dir)
    path = Path(temp)
    try:
        fetched = await asyncio.to_thread(_fetched_from_file, path)
        if fetched.size > max_bytes:
            raise fail(
                f"the image is larger than the download limit of {human_bytes(max_bytes)}",
                code="too_large",
            )
        return await asyncio.to_thread(
            _save, fetched, source, dest, stem, max_pixels, target, fail, resize_to
        )
    finally:
        _discard(path)

"""Save one result image: download it (retrying what may recover), then record it in the
ledger. Used by the router while a job runs and by `resume` after a crash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from .clock import Sleep
from .download import download_image, is_retryable
from .errors import DownloadFailedError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .ledger import Ledger
    from .result import SavedImage
    from .urls import HostPolicy

__all__ = ["DOWNLOAD_ATTEMPTS", "ImageSink", "record_saved", "save_image"]

DOWNLOAD_ATTEMPTS = 8  # GETs are free: a flaky download gets many tries before we give up


@dataclass(frozen=True)
class ImageSink:
    """Where and how a provider's result images are saved."""

    http: httpx.AsyncClient
    output_dir: Path
    provider: str
    max_bytes: int
    max_pixels: int
    headers: Mapping[str, str]
    sleep: Sleep
    hosts: HostPolicy | None = None  # where downloads may go (None: anywhere)


def _may_recover(exc: BaseException) -> bool:
    # A 404 right after a job finishes is often storage catching up, so it is retried too.
    return isinstance(exc, DownloadFailedError) and (is_retryable(exc) or exc.status_code == 404)


async def save_image(
    sink: ImageSink,
    ledger: Ledger | None,
    *,
    task_id: str,
    index: int,
    url: str,
    stem: str,
    convert_to: str | None,
    url_expires_at: datetime | None,
    provider_task_id: str | None = None,
    resize_to: tuple[int, int] | None = None,
) -> SavedImage:
    """Download and record one image. A failure raises DownloadFailedError saying where the
    image can still be had (the provider's task id and `imagerouter resume`), never only the
    result URL: that may be a loopback emulator, or expire, long before the user reads it."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(DOWNLOAD_ATTEMPTS),
        wait=wait_exponential(multiplier=0.25, max=4),
        retry=retry_if_exception(_may_recover),
        sleep=sink.sleep,
        reraise=True,
    )
    where = _where(sink.provider, provider_task_id or task_id, index, url_expires_at)
    try:
        async for attempt in retrying:
            with attempt:
                image = await download_image(
                    sink.http,
                    url,
                    sink.output_dir,
                    stem,
                    provider=sink.provider,
                    max_bytes=sink.max_bytes,
                    max_pixels=sink.max_pixels,
                    convert_to=convert_to,
                    headers=sink.headers,
                    url_expires_at=url_expires_at,
                    hosts=sink.hosts,
                    resize_to=resize_to,
                )
    except DownloadFailedError as exc:
        elsewhere = _ELSEWHERE if exc.code == "write_failed" else ""
        exc.message = f"{_reason(exc.message)}; {where}{elsewhere}"
        exc.task_id = exc.task_id or provider_task_id
        exc.args = (exc._render(),)
        raise
    except OSError as exc:  # the output folder: a full disk, no permission, a read-only fs
        raise DownloadFailedError(
            f"the image could not be written to {sink.output_dir}: "
            f"{exc.strerror or type(exc).__name__}; {where}{_ELSEWHERE}",
            provider=sink.provider,
            code="write_failed",
            task_id=provider_task_id,
        ) from None
    if ledger is not None:
        await record_saved(ledger, task_id, index, image, source_url=url,
                           url_expires_at=url_expires_at)
    return image


async def record_saved(
    ledger: Ledger,
    task_id: str,
    index: int,
    image: SavedImage,
    *,
    source_url: str,
    url_expires_at: datetime | None = None,
) -> None:
    """The image's ledger row, written only once its file is in place."""
    await ledger.aio.image_saved(
        task_id,
        index=index,
        path=str(image.path),
        sha256=image.sha256,
        source_url=source_url,
        width=image.width,
        height=image.height,
        format=image.format,
        size_bytes=image.size_bytes,
        url_expires_at=url_expires_at,
    )


_ELSEWHERE = " (`imagerouter resume --output-dir DIR` saves it elsewhere)"


def _reason(message: str) -> str:
    """download.py's message up to where it names the result URL (which is dropped)."""
    head, _, _ = message.partition(". It is still at ")
    return head


def _where(provider: str, task: str, index: int, expires: datetime | None) -> str:
    until = f" until {expires.isoformat()}" if expires is not None else " while it keeps it"
    return (
        f"the job is done and paid, and the image stays at {provider} (task {task}, image "
        f"{index + 1}){until}: `imagerouter resume` downloads it"
    )

"""OpenAI's `ImagesResponse`, whole, for a finished job (and the streamed `completed` events).

`created`, `data` (`b64_json`, or a signed URL), `background`, `output_format`, `quality`,
`size` as served, `usage` (usage.py: estimated where the backend reports no tokens), plus the
extension `imagerouter: {cost_usd, billed_usd, provider, model, request_id}`. `quality` is the
one asked for, else the one the backend was sent, else `auto`'s usual pick, `high`.

`output_compression` below 100 on jpeg or webp is applied here, by re-encoding each saved image
with Pillow into a sibling file (`<name>.q<N>.<ext>`): no backend we route to takes it. The
saved original stays where the ledger says.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..pricing import quantize
from .errors import ApiError
from .usage import estimated_usage

if TYPE_CHECKING:
    from ..result import GenerationResult, SavedImage
    from .jobs import Job
    from .openai_shapes import AnswerShape, ResponseFormat
    from .signed_urls import UrlSigner

__all__ = ["completed_event", "images_body", "served_paths", "shape_fields", "usage_of"]

_QUALITIES = ("low", "medium", "high")
_PIL_FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}


async def served_paths(result: GenerationResult, shape: AnswerShape | None) -> list[Path]:
    """The files to serve: the saved images, re-encoded when output_compression asks for it."""
    compression = None if shape is None else shape.output_compression
    paths: list[Path] = []
    for image in result.images:
        if compression is None or compression >= 100 or image.format not in _PIL_FORMATS:
            paths.append(image.path)
        else:
            paths.append(await asyncio.to_thread(_reencode, image, compression))
    return paths


def _reencode(image: SavedImage, quality: int) -> Path:
    target = image.path.with_name(f"{image.path.stem}.q{quality}{image.path.suffix}")
    with Image.open(image.path) as opened:
        opened.save(target, _PIL_FORMATS[image.format], quality=quality)
    return target


def _quality(result: GenerationResult, shape: AnswerShape | None) -> str:
    if shape is not None and shape.quality in _QUALITIES:
        return shape.quality
    sent = result.params.get("quality")
    return sent if isinstance(sent, str) and sent in _QUALITIES else "high"


def shape_fields(result: GenerationResult, shape: AnswerShape | None) -> dict[str, Any]:
    """`background`, `output_format`, `quality`, `size` as served."""
    out: dict[str, Any] = {
        "background": "transparent" if shape and shape.background == "transparent" else "opaque",
        "quality": _quality(result, shape),
    }
    if result.images:
        first = result.images[0]
        out["output_format"] = first.format
        out["size"] = f"{first.width}x{first.height}"
    return out


def usage_of(result: GenerationResult, shape: AnswerShape | None) -> dict[str, Any]:
    first = result.images[0] if result.images else None
    return estimated_usage(
        model=result.model,
        quality=_quality(result, shape),
        width=first.width if first else 1024,
        height=first.height if first else 1024,
        images=len(result.images),
        prompt_chars=0 if shape is None else shape.prompt_chars,
    )


def _extension(result: GenerationResult) -> dict[str, Any]:
    return {
        "provider": result.provider,
        "model": result.model,
        "request_id": result.request_id,
        "cost_usd": str(quantize(result.cost_usd)),
        "billed_usd": None if result.billed_usd is None else str(quantize(result.billed_usd)),
        "usage_source": "estimated",
    }


async def images_body(
    job: Job,
    *,
    response_format: ResponseFormat,
    base_url: str,
    signer: UrlSigner,
    file_url: dict[str, str],
) -> dict[str, Any]:
    """The ImagesResponse. `file_url`: path -> `/v1/files/{id}` URL, for a file the signer
    cannot sign (outside the output directory)."""
    result = job.result
    assert result is not None
    paths = job.served_paths or [image.path for image in result.images]
    data: list[dict[str, Any]] = []
    for path in paths:
        if response_format == "url":
            url = signer.url(base_url, path) or file_url.get(str(path))
            data.append({"url": url})
        else:
            data.append({"b64_json": await asyncio.to_thread(b64_of, path)})
    body: dict[str, Any] = {"created": int(job.created), "data": data}
    body.update(shape_fields(result, job.shape))
    body["usage"] = usage_of(result, job.shape)
    body["imagerouter"] = _extension(result)
    return body


def completed_event(job: Job, b64: str, index: int) -> dict[str, Any]:
    """One `image_generation.completed` / `image_edit.completed` event's data."""
    result = job.result
    assert result is not None
    kind = "image_edit" if job.operation == "edit" else "image_generation"
    event: dict[str, Any] = {
        "type": f"{kind}.completed",
        "b64_json": b64,
        "created_at": int(time.time()),
        "image_index": index,
    }
    event.update(shape_fields(result, job.shape))
    event["usage"] = usage_of(result, job.shape)
    event["imagerouter"] = _extension(result)
    return event


def b64_of(path: Path) -> str:
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as exc:
        raise ApiError(
            500,
            f"a saved image cannot be read: {exc.strerror}",
            type="server_error",
            code="image_unreadable",
        ) from None

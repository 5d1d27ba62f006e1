"""`stream: true` answers: OpenAI's server-sent events for an images job.

`image_generation.partial_image` (or `image_edit.partial_image`) for each partial image the
backend streamed, at most `partial_images` of them, then one `*.completed` event per image
with `usage`. A backend that does not stream sends no partials, which OpenAI's contract
allows ("the final image may be sent before the full number of partial images"). A job that
fails ends the stream with an `error` event in OpenAI's error shape.

The stream only watches the job: a client that disconnects stops the stream, never the job,
whose images still reach disk and the ledger (`GET /v1/images/jobs/{id}`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.responses import StreamingResponse

from .answers import b64_of, completed_event

if TYPE_CHECKING:
    from .jobs import Job

__all__ = ["event_stream", "sse"]


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _events(job: Job, limit: int) -> AsyncIterator[bytes]:
    kind = "image_edit" if job.operation == "edit" else "image_generation"
    # Partial events echo the settings asked for (OpenAI's enums there include `auto`).
    shape = job.shape
    echo = {
        "quality": (shape.quality if shape else None) or "auto",
        "background": shape.background if shape else "auto",
    }
    sent = 0
    while True:
        job.changed.clear()
        while sent < min(limit, len(job.partials)):
            partial = base64.b64encode(job.partials[sent]).decode("ascii")
            yield sse(
                f"{kind}.partial_image",
                {
                    "type": f"{kind}.partial_image",
                    "b64_json": partial,
                    "partial_image_index": sent,
                    "created_at": int(time.time()),
                    **echo,
                },
            )
            sent += 1
        if job.done:
            break
        await job.changed.wait()
    if job.error is not None:
        yield sse("error", job.error.body())
        return
    result = job.result
    assert result is not None
    paths = job.served_paths or [image.path for image in result.images]
    for index, path in enumerate(paths):
        b64 = await asyncio.to_thread(b64_of, path)
        yield sse(f"{kind}.completed", completed_event(job, b64, index))


def event_stream(job: Job, headers: dict[str, str]) -> StreamingResponse:
    """The SSE response for a started job."""
    shape = job.shape
    limit = 0 if shape is None else shape.partial_images
    return StreamingResponse(
        _events(job, limit),
        media_type="text/event-stream",
        headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
    )

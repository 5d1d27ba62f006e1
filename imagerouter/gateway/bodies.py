"""Reading request bodies with caps: JSON objects and multipart uploads.

Bodies are read chunk by chunk and refused as soon as they pass `gateway.max_body_bytes`
(a declared `Content-Length` over the cap is refused before reading); each uploaded file is
held to `gateway.max_upload_bytes`. Every problem is a 400 in OpenAI's shape, never a 500.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from ..request import ImageInput
from .errors import ApiError, bad_request
from .openai_shapes import MAX_INPUT_IMAGES

__all__ = ["EditForm", "is_multipart", "read_body", "read_edit_form", "read_json_object"]

_MAX_FORM_FIELDS = 100
_IMAGE_FIELDS = ("image", "image[]")


@dataclass(frozen=True)
class EditForm:
    values: dict[str, str]
    images: tuple[ImageInput, ...]
    mask: ImageInput | None


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or a 400 once it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise bad_request("invalid Content-Length header") from None
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise bad_request("the client disconnected while sending the body",
                          code="client_disconnected") from None
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return bad_request(
        f"the request body is larger than the gateway accepts ({limit} bytes; "
        "gateway.max_body_bytes)",
        code="request_too_large",
    )


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    body = await read_body(request, limit)
    try:
        # Decimals, not floats: max_cost_usd is money.
        data = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return data


async def read_edit_form(request: Request, *, body_limit: int, upload_limit: int) -> EditForm:
    """A multipart edit: `image` / `image[]` files (up to 16), an optional `mask` file, and
    the other parameters as text."""
    if not is_multipart(request):
        raise bad_request(
            "image edits take multipart/form-data (image files plus fields)",
            code="invalid_content_type",
        )
    body = await read_body(request, body_limit)
    replay = _Replay(body)
    try:
        form = await Request(request.scope, replay.receive).form(
            max_files=MAX_INPUT_IMAGES + 1, max_fields=_MAX_FORM_FIELDS
        )
    except (MultiPartException, HTTPException) as exc:
        # Starlette turns its parser's complaints into HTTPException(400) inside an app.
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise bad_request(f"the multipart body cannot be read: {detail}",
                          code="invalid_multipart") from None
    try:
        values: dict[str, str] = {}
        images: list[ImageInput] = []
        mask: ImageInput | None = None
        for name, value in form.multi_items():
            if name in _IMAGE_FIELDS or name == "mask":
                if not isinstance(value, UploadFile):
                    raise bad_request(f"{name} must be an uploaded file", param=_param(name))
                item = await _upload(value, name, len(images), upload_limit)
                if name == "mask":
                    mask = item
                else:
                    images.append(item)
            elif isinstance(value, UploadFile):
                raise bad_request(f"{name} must be a text field, not a file", param=name)
            else:
                values[name] = value
    finally:
        await form.close()
    if len(images) > MAX_INPUT_IMAGES:
        raise bad_request(f"at most {MAX_INPUT_IMAGES} input images", param="image")
    if not images:
        raise bad_request("Missing required parameter: 'image'.", param="image",
                          code="missing_required_parameter")
    return EditForm(values=values, images=tuple(images), mask=mask)


async def _upload(upload: UploadFile, field: str, index: int, limit: int) -> ImageInput:
    if upload.size is not None and upload.size > limit:
        raise _file_too_large(field, limit)
    data = await upload.read()
    if len(data) > limit:
        raise _file_too_large(field, limit)
    if not data:
        raise bad_request(f"{_param(field)}: the uploaded file is empty", param=_param(field),
                          code="invalid_image")
    default = "mask" if field == "mask" else f"image[{index}]"
    return ImageInput(kind="bytes", data=data, label=_label(upload.filename, default))


def _file_too_large(field: str, limit: int) -> ApiError:
    return bad_request(
        f"{_param(field)}: the file is larger than {limit} bytes (gateway.max_upload_bytes)",
        param=_param(field),
        code="file_too_large",
    )


def _param(field: str) -> str:
    return "mask" if field == "mask" else "image"


def _label(filename: str | None, default: str) -> str:
    # The client's file name, made safe to show in messages and the ledger.
    name = re.sub(r"[^A-Za-z0-9._ -]", "_", (filename or "").rsplit("/", 1)[-1])[:100]
    return f"{default} ({name})" if name else default


class _Replay:
    """An ASGI `receive` that hands back a body already read (and capped)."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._sent = False

    async def receive(self) -> Message:
        if self._sent:
            return {"type": "http.disconnect"}
        self._sent = True
        return {"type": "http.request", "body": self._body, "more_body": False}

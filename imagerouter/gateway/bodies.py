"""Reading request bodies with caps: JSON objects and multipart uploads.

A body of the wrong media type is a 415 before a byte of it is read: JSON routes take only
`application/json`, edits only `multipart/form-data` (a browser can send `text/plain` to any
address without a CORS preflight). Bodies are read chunk by chunk and refused as soon as they
pass `gateway.max_body_bytes` (a declared `Content-Length` over the cap is refused before
reading); a JSON body is held to `MAX_JSON_BODY_BYTES`, a form's text field to
`MAX_TEXT_PART_BYTES`, and each uploaded file to `gateway.max_upload_bytes`. The bytes count
against the gateway-wide pool (`inflight.py`) while held. Text must be UTF-8. Every problem is
a 4xx in OpenAI's shape, never a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from ..request import ImageInput
from .errors import ApiError, bad_request
from .inflight import BodyShare
from .openai_shapes import MAX_INPUT_IMAGES, MAX_PROMPT_CHARS, shown

__all__ = [
    "MAX_JSON_BODY_BYTES",
    "MAX_TEXT_PART_BYTES",
    "EditForm",
    "is_json",
    "is_multipart",
    "read_body",
    "read_edit_form",
    "read_json_object",
    "unsupported_media_type",
]

_MAX_FORM_FIELDS = 100
_IMAGE_FIELDS = ("image", "image[]")
# A generation body is a prompt (32,000 characters, at most 6 bytes each as JSON escapes)
# plus a few short fields: 1 MiB is ample, and nothing bigger is held for a JSON route.
MAX_JSON_BODY_BYTES = 1024 * 1024
# A form's text field: the longest prompt in UTF-8 (4 bytes a character at most).
MAX_TEXT_PART_BYTES = 4 * MAX_PROMPT_CHARS


@dataclass(frozen=True)
class EditForm:
    values: dict[str, str]
    images: tuple[ImageInput, ...]
    mask: ImageInput | None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def is_multipart(request: Request) -> bool:
    return _media_type(request) == "multipart/form-data"


def is_json(request: Request) -> bool:
    return _media_type(request) == "application/json"


def unsupported_media_type(wanted: str) -> ApiError:
    return ApiError(
        415,
        f"This endpoint takes {wanted} bodies (send the matching Content-Type header).",
        code="invalid_content_type",
    )


async def read_body(request: Request, limit: int, share: BodyShare | None = None) -> bytes:
    """The whole body, or a 400 once it passes `limit` bytes. With `share`, the bytes are
    taken from the gateway's pool first (a 503 when it is full)."""
    declared = request.headers.get("content-length")
    reserved = 0
    if declared is not None:
        if not declared.strip().isdigit():
            raise bad_request("invalid Content-Length header")
        if int(declared) > limit:
            raise _too_large(limit)
        reserved = int(declared)
        if share is not None:
            share.take(reserved)
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            if total > reserved:  # chunked, or more than declared: counted as it comes
                if share is not None:
                    share.take(total - reserved)
                reserved = total
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


async def read_json_object(
    request: Request, limit: int, share: BodyShare | None = None
) -> dict[str, Any]:
    if not is_json(request):
        raise unsupported_media_type("application/json")
    body = await read_body(request, min(limit, MAX_JSON_BODY_BYTES), share)
    try:
        # Decimals, not floats: max_cost_usd is money. UTF-8 only (RFC 8259).
        data = json.loads(body.decode("utf-8"), parse_float=Decimal)
    except (ValueError, RecursionError):
        raise bad_request(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return data


async def read_edit_form(
    request: Request, *, body_limit: int, upload_limit: int, share: BodyShare | None = None
) -> EditForm:
    """A multipart edit: `image` / `image[]` files (up to 16), an optional `mask` file, and
    the other parameters as text."""
    if not is_multipart(request):
        raise unsupported_media_type("multipart/form-data (image files plus fields)")
    body = await read_body(request, body_limit, share)
    try:
        form = await _StrictParser(request.headers, _once(body),
                                   max_files=MAX_INPUT_IMAGES + 1, max_fields=_MAX_FORM_FIELDS,
                                   max_part_size=MAX_TEXT_PART_BYTES).parse()
    except _FieldError as exc:
        raise bad_request(exc.message, param=exc.param, code=exc.code) from None
    except MultiPartException as exc:
        raise bad_request(f"the multipart body cannot be read: {exc.message}",
                          code="invalid_multipart") from None
    finally:
        del body
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


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


class _FieldError(MultiPartException):
    """A text field the parser refused, naming it (OpenAI's `param`)."""

    def __init__(self, message: str, param: str, code: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class _StrictParser(MultiPartParser):
    """Starlette's parser, but a text field that is not UTF-8 is refused (Starlette falls
    back to Latin-1 and would hand on mojibake), and an over-long one is refused naming it."""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is None and len(part.data) + (end - start) > self.max_part_size:
            name = shown(part.field_name)
            raise _FieldError(f"{name} is longer than the gateway accepts", name,
                              "string_above_max_length")
        super().on_part_data(data, start, end)

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError:
                name = shown(part.field_name)
                raise _FieldError(f"{name} is not valid UTF-8 text", name,
                                  "invalid_encoding") from None
        super().on_part_end()

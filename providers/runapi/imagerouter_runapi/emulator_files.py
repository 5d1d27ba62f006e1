"""The RunAPI emulator's file and account routes.

- `POST /api/v1/files` with `{"source": {"type": "base64", "data": ...} | {"type": "url",
  "url": ...}, "file_name": ...}`: the documented upload (what RunAPIClient.upload uses).
- `POST /api/v1/files/prepare`, `PUT` to the returned `upload_url` with the returned headers,
  `POST /api/v1/files/confirm`: the direct flow RunAPI's Python SDK uses for local files
  (runapi.core.files.FilesClient._upload_direct).
- `GET /files/{id}`: result images and uploads (no auth, like a CDN URL), with the download
  faults.
- `GET /api/v1/me`, `GET /api/v1/me/balance`: the account endpoints.

URL sources are recorded, never fetched: the emulator makes no outbound requests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mimetypes
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerouter.emulation import Fault, drop_connection

from .emulator_state import (
    DirectUpload,
    EmulatorState,
    apply_common_fault,
    error_response,
    iso,
    json_response,
)

__all__ = ["file_routes", "sniff_mime"]

_UPLOAD_URL_TTL = 3600.0  # "the temporary upload URL lasts one hour" (RunAPI CLI skill)


def file_routes(state: EmulatorState) -> list[Route]:
    files = _FileRoutes(state)
    return [
        Route("/api/v1/files", files.create, methods=["POST"]),
        Route("/api/v1/files/prepare", files.prepare, methods=["POST"]),
        Route("/api/v1/files/confirm", files.confirm, methods=["POST"]),
        Route("/_direct_uploads/{signed_id}", files.put_bytes, methods=["PUT"]),
        Route("/files/{file_id}", files.download, methods=["GET"]),
        Route("/api/v1/me", files.me, methods=["GET"]),
        Route("/api/v1/me/balance", files.balance, methods=["GET"]),
    ]


def sniff_mime(data: bytes) -> str:
    """The image type by magic bytes (what RunAPI would record), else octet-stream."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"GIF8":
        return "image/gif"
    return "application/octet-stream"


class _FileRoutes:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def _json_body(self, request: Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def create(self, request: Request) -> Response:
        state = self.state
        if not state.authorized(request):
            return error_response(401, "Unauthorized")
        fault = state.options.faults.draw("upload")
        early = await apply_common_fault(state, request, "upload", fault)
        if early is not None:
            return early
        body = await self._json_body(request)
        if body is None:
            return error_response(400, "Bad input")
        source = body.get("source")
        name = body.get("file_name")
        if not isinstance(source, dict):
            return error_response(422, "Validation failed", fields={"source": ["is required"]})
        kind = source.get("type")
        if kind == "base64":
            data = _decode_base64(source.get("data"))
            if data is None:
                return error_response(
                    422, "Validation failed", fields={"source.data": ["is not valid base64"]}
                )
            if len(data) > state.options.max_upload_bytes:
                return error_response(413, "File too large")
            mime = sniff_mime(data)
            file_name = name if isinstance(name, str) and name else _default_name(mime)
            file_id = state.book.put_file(data, mime, file_name)
            url, size = f"{_base(request)}/files/{file_id}", len(data)
        elif kind == "url" and _is_url(source.get("url")):
            # Recorded, not fetched: the emulator never reaches beyond itself.
            url = str(source["url"])
            mime = mimetypes.guess_type(url)[0] or "application/octet-stream"
            file_name = name if isinstance(name, str) and name else url.rsplit("/", 1)[-1]
            size = 0
        else:
            return error_response(
                422, "Validation failed",
                fields={"source": ["must be {type: url, url} or {type: base64, data}"]},
            )
        state.counters.bump("uploads")
        return await self._uploaded(request, fault, file_name, url, size, mime)

    async def _uploaded(
        self,
        request: Request,
        fault: Fault | None,
        file_name: str,
        url: str,
        size: int,
        mime: str,
    ) -> Response:
        """The answer for a stored upload, unless a fault strikes after the store."""
        kind = fault.kind if fault is not None else None
        if kind in ("reset_after_send", "created_500", "malformed"):
            self.state.counters.bump_fault("upload", kind)
        if kind == "reset_after_send":
            await drop_connection(request)
            return Response(status_code=500)
        if kind == "created_500":
            return error_response(500, "Internal server error")
        if kind == "malformed":
            return Response('{"url": ', 200, media_type="application/json")
        ttl = min(_UPLOAD_URL_TTL, self.state.options.url_ttl_seconds)
        return json_response(
            {
                "file_name": file_name,
                "url": url,
                "size_bytes": size,
                "mime_type": mime,
                "created_at": iso(),
                "expires_at": iso(ttl),
            }
        )

    async def prepare(self, request: Request) -> Response:
        state = self.state
        if not state.authorized(request):
            return error_response(401, "Unauthorized")
        body = await self._json_body(request)
        if body is None:
            return error_response(400, "Bad input")
        filename, size, checksum = body.get("filename"), body.get("byte_size"), body.get("checksum")
        errors: dict[str, list[str]] = {}
        if not isinstance(filename, str) or not filename:
            errors["filename"] = ["is required"]
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            errors["byte_size"] = ["must be a positive integer"]
        if not isinstance(checksum, str) or not checksum:
            errors["checksum"] = ["is required"]
        if errors:
            return error_response(422, "Validation failed", fields=errors)
        assert isinstance(filename, str) and isinstance(size, int) and isinstance(checksum, str)
        if size > state.options.max_upload_bytes:
            return error_response(413, "File too large")
        signed_id = uuid.uuid4().hex
        with state.lock:
            state.direct_uploads[signed_id] = DirectUpload(signed_id, filename, size, checksum)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return json_response(
            {
                "signed_id": signed_id,
                "upload_url": f"{_base(request)}/_direct_uploads/{signed_id}",
                "headers": {"Content-Type": content_type, "Content-MD5": checksum},
                "expires_at": iso(_UPLOAD_URL_TTL),
            }
        )

    async def put_bytes(self, request: Request) -> Response:
        """The pre-authorized storage URL: no API key, the exact headers prepare issued."""
        state = self.state
        with state.lock:
            pending = state.direct_uploads.get(request.path_params["signed_id"])
        if pending is None:
            return error_response(404, "Not found")
        data = await request.body()
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        md5 = base64.b64encode(digest).decode("ascii")
        if len(data) != pending.byte_size or md5 != pending.checksum:
            return error_response(400, "Checksum or size does not match the prepared upload")
        if request.headers.get("content-md5") != pending.checksum:
            return error_response(400, "Content-MD5 header does not match the prepared upload")
        pending.data = data
        return Response(status_code=200)

    async def confirm(self, request: Request) -> Response:
        state = self.state
        if not state.authorized(request):
            return error_response(401, "Unauthorized")
        fault = state.options.faults.draw("upload")
        early = await apply_common_fault(state, request, "upload", fault)
        if early is not None:
            return early
        body = await self._json_body(request)
        signed_id = body.get("signed_id") if body else None
        with state.lock:
            pending = state.direct_uploads.get(signed_id) if isinstance(signed_id, str) else None
        if pending is None:
            return error_response(404, "Upload not found", code="not_found")
        if pending.data is None:
            return error_response(
                422, "Validation failed", fields={"signed_id": ["has no uploaded bytes yet"]}
            )
        with state.lock:
            state.direct_uploads.pop(pending.signed_id, None)
        mime = sniff_mime(pending.data)
        file_id = state.book.put_file(pending.data, mime, pending.filename)
        state.counters.bump("uploads")
        url = f"{_base(request)}/files/{file_id}"
        return await self._uploaded(request, fault, pending.filename, url, len(pending.data), mime)

    async def download(self, request: Request) -> Response:
        state = self.state
        state.counters.bump("downloads")
        fault = state.options.faults.draw("download")
        early = await apply_common_fault(state, request, "download", fault)
        if early is not None:
            return early
        kind = fault.kind if fault is not None else None
        if kind is not None:
            state.counters.bump_fault("download", kind)
        found = state.book.file(request.path_params["file_id"])
        if kind == "download_404" or found is None:
            return error_response(404, "Not found")
        data, mime = found
        if kind == "truncated":
            data = data[: len(data) // 2]
        elif kind == "malformed":
            data, mime = b"<html>not an image</html>", "text/html"
        return Response(data, 200, media_type=mime)

    async def me(self, request: Request) -> Response:
        if not self.state.authorized(request):
            return error_response(401, "Unauthorized")
        return json_response(
            {
                "id": 1,
                "name": "Emulated user",
                "email": "emulator@example.invalid",
                "account": {"id": 1, "name": "Emulated account"},
            }
        )

    async def balance(self, request: Request) -> Response:
        state = self.state
        if not state.authorized(request):
            return error_response(401, "Unauthorized")
        balance = state.balance_cents()
        spent = state.spent_cents()
        return json_response(
            {
                "balance_cents": balance,
                "paid_balance_cents": balance,
                "bonus_balance_cents": 0,
                "spent_cents_today": spent,
                "spent_cents_total": spent,
            }
        )


def _decode_base64(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _default_name(mime: str) -> str:
    ext = (mimetypes.guess_extension(mime) or ".bin").lstrip(".")
    return f"upload-{uuid.uuid4().hex[:8]}.{ext}"


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")

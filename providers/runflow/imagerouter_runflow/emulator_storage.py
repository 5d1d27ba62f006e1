"""The Runflow emulator's storage routes: the three asset-upload steps and result files.

`POST /v1/asset-uploads` hands out a presigned-style PUT URL on this emulator
(`/uploads/{asset_id}`), which refuses an Authorization header the way S3 refuses a second
auth mechanism; the confirmation returns the file's `/files/{id}` URL. The `upload` faults
are drawn once per step, so `upload:seq=ok,reset` drops the PUT.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagerouter.emulation import drop_connection

from .emulator_http import ApiBase, error

__all__ = ["StorageApi"]


class StorageApi(ApiBase):
    """Asset uploads (three steps) and `GET /files/{id}` with the download faults."""

    async def _upload_fault(self, request: Request) -> Response | None:
        fault = self._draw("upload")
        if fault is not None and fault.kind in ("reset_after_send", "created_500"):
            # Answered after the step's work; handled by the caller through this marker.
            request.state.late_fault = fault.kind
            return None
        return await self._common_fault(request, fault)

    async def _late(self, request: Request, response: Response) -> Response:
        late = getattr(request.state, "late_fault", None)
        if late == "reset_after_send":
            await drop_connection(request)
            return Response(status_code=500)
        if late == "created_500":
            return error(500, "Internal server error (emulated fault)")
        return response

    async def create_upload(self, request: Request) -> Response:
        if not self._authorized(request):
            return error(401, "Missing or invalid API key", "UNAUTHORIZED")
        body = await self._json(request)
        problems = _upload_problems(body, self.options.max_upload_bytes)
        if problems:
            status = 413 if any(f == "size_bytes" and "at most" in m for f, m in problems) else 422
            errors = [{"field": name, "message": text} for name, text in problems]
            return error(status, "Invalid upload", "VALIDATION_ERROR", errors)
        answer = await self._upload_fault(request)
        if answer is not None:
            return answer
        upload = self.state.new_upload(body["filename"], body["mime_type"], body["size_bytes"])
        url = f"{self._base(request)}/uploads/{upload.asset_id}?X-Amz-Signature=emulated"
        return await self._late(
            request, JSONResponse({"asset_id": upload.asset_id, "upload_url": url}, status_code=201)
        )

    async def put_upload(self, request: Request) -> Response:
        # A presigned storage URL: a second auth mechanism is refused, as S3 does.
        if "authorization" in request.headers:
            return Response(
                b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism "
                b"allowed</Message></Error>",
                status_code=400,
                media_type="application/xml",
            )
        upload = self.state.upload(request.path_params["asset_id"])
        if upload is None or request.query_params.get("X-Amz-Signature") != "emulated":
            return Response(
                b"<Error><Code>AccessDenied</Code></Error>",
                status_code=403,
                media_type="application/xml",
            )
        answer = await self._upload_fault(request)
        if answer is not None:
            return answer
        data = await request.body()
        content_type = request.headers.get("content-type", "")
        if content_type != upload.mime_type or len(data) != upload.size_bytes:
            return Response(
                b"<Error><Code>SignatureDoesNotMatch</Code></Error>",
                status_code=403,
                media_type="application/xml",
            )
        upload.file_id = self.state.book.put_file(data, upload.mime_type, upload.filename)
        return await self._late(request, Response(status_code=200))

    async def confirm_upload(self, request: Request) -> Response:
        if not self._authorized(request):
            return error(401, "Missing or invalid API key", "UNAUTHORIZED")
        upload = self.state.upload(request.path_params["asset_id"])
        if upload is None:
            return error(404, "Asset upload not found", "ASSET_UPLOAD_NOT_FOUND")
        if upload.file_id is None:
            return error(409, "The file was not uploaded yet", "UPLOAD_INCOMPLETE")
        answer = await self._upload_fault(request)
        if answer is not None:
            return answer
        self.counters.bump("uploads")
        url = f"{self._base(request)}/files/{upload.file_id}"
        return await self._late(
            request,
            JSONResponse(
                {
                    "id": upload.asset_id,
                    "name": upload.filename,
                    "url": url,
                    "thumbnail_url": url,
                    "mime_type": upload.mime_type,
                    "size_bytes": upload.size_bytes,
                    "created_at": self.state.iso(self.state.now()),
                },
                status_code=201,
            ),
        )

    # -- files ---------------------------------------------------------------------------

    async def file(self, request: Request) -> Response:
        fault = self._draw("download")
        if fault is not None and fault.kind == "download_404":
            return Response(
                b"<Error><Code>NoSuchKey</Code></Error>",
                status_code=404,
                media_type="application/xml",
            )
        if fault is None or fault.kind != "truncated":
            answer = await self._common_fault(request, fault)
            if answer is not None:
                return answer
        stored = self.state.book.file(request.path_params["file_id"])
        if stored is None:
            return Response(
                b"<Error><Code>NoSuchKey</Code></Error>",
                status_code=404,
                media_type="application/xml",
            )
        data, mime = stored
        self.counters.bump("downloads")
        if fault is not None and fault.kind == "truncated":
            data = data[: len(data) // 2]
        return Response(data, media_type=mime)


def _upload_problems(body: Any, max_bytes: int) -> list[tuple[str, str]]:
    if not isinstance(body, Mapping):
        return [("body", "must be a JSON object")]
    problems = []
    for name in ("filename", "mime_type"):
        if not isinstance(body.get(name), str) or not body.get(name):
            problems.append((name, "is required"))
    size = body.get("size_bytes")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        problems.append(("size_bytes", "must be a positive integer"))
    elif size > max_bytes:
        problems.append(("size_bytes", f"may be at most {max_bytes} bytes (50 MB)"))
    return problems

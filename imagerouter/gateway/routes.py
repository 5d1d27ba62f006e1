"""The images endpoints: OpenAI's synchronous calls, the async jobs API and served files."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from .bodies import (
    is_json,
    is_multipart,
    read_edit_form,
    read_json_object,
    unsupported_media_type,
)
from .errors import ApiError, bad_request, error_response, not_found
from .files import MEDIA_TYPES
from .inflight import BodyShare
from .openai_shapes import ImageCall, ResponseFormat, parse_image_call
from .streaming import event_stream

if TYPE_CHECKING:
    from .jobs import Job
    from .service import Gateway

__all__ = [
    "body_share",
    "create_job",
    "edits",
    "gateway_of",
    "generations",
    "get_file",
    "get_job",
    "get_signed_file",
    "list_jobs",
    "variations",
]

_MAX_LIST = 100


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def body_share(request: Request) -> BodyShare | None:
    """This request's part of the in-flight bytes pool (set by the app's endpoint wrapper)."""
    share: BodyShare | None = getattr(request.state, "body_share", None)
    return share


async def _generation_call(
    request: Request, gateway: Gateway, default_format: ResponseFormat
) -> ImageCall:
    values = await read_json_object(request, gateway.settings.max_body_bytes,
                                    body_share(request))
    return parse_image_call(values, operation="generate", config=gateway.config,
                            response_format_default=default_format)


async def _edit_call(
    request: Request, gateway: Gateway, default_format: ResponseFormat
) -> ImageCall:
    form = await read_edit_form(request, body_limit=gateway.settings.max_body_bytes,
                                upload_limit=gateway.settings.max_upload_bytes,
                                share=body_share(request))
    return parse_image_call(form.values, operation="edit", config=gateway.config,
                            response_format_default=default_format,
                            images=form.images, mask=form.mask, form=True)


def _keyed(request: Request, call: ImageCall) -> ImageCall:
    """The call with the request's `Idempotency-Key`, scoped by the caller's gateway key
    (hashed, never stored as given), so two tenants' keys never collide."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return call
    auth = request.headers.get("authorization", "")
    scope = hashlib.sha256(auth.encode("utf-8", "surrogateescape")).hexdigest() if auth else ""
    return replace(call, idempotency_key=key, idempotency_scope=scope)


async def generations(request: Request) -> Response:
    """POST /v1/images/generations"""
    gateway = gateway_of(request)
    call = await _generation_call(request, gateway, gateway.settings.response_format_default)
    return await _answer(request, gateway, gateway.submit(_keyed(request, call)))


async def edits(request: Request) -> Response:
    """POST /v1/images/edits (multipart)"""
    gateway = gateway_of(request)
    call = _keyed(request, await _edit_call(request, gateway,
                                            gateway.settings.response_format_default))
    return await _answer(request, gateway, gateway.submit(call, hold=_handover(request)))


def _handover(request: Request) -> BodyShare | None:
    # The job keeps the uploaded images until it ends, so it keeps their share too.
    share = body_share(request)
    return None if share is None else share.handover()


async def _answer(request: Request, gateway: Gateway, job: Job) -> Response:
    if job.shape is not None and job.shape.stream:
        return event_stream(job, gateway.job_headers(job))
    await gateway.wait(job)
    headers = gateway.job_headers(job)
    if job.error is not None:
        return error_response(job.error, headers)
    body = await gateway.images_body(job, job.response_format, str(request.base_url))
    return JSONResponse(body, headers=headers)


async def create_job(request: Request) -> Response:
    """POST /v1/images/jobs: JSON is a generation, multipart an edit. 202 at once.
    Jobs answer with URLs unless `response_format: b64_json` is asked for."""
    gateway = gateway_of(request)
    if is_multipart(request):
        call = _keyed(request, await _edit_call(request, gateway, "url"))
        job = gateway.submit(call, hold=_handover(request))
    elif is_json(request):
        job = gateway.submit(_keyed(request, await _generation_call(request, gateway, "url")))
    else:
        raise unsupported_media_type("application/json (a generation) or multipart/form-data "
                                     "(an edit)")
    await job.recorded.wait()  # readable from every replica before the client hears of it
    return JSONResponse(
        job.summary(),
        status_code=202,
        headers={**gateway.job_headers(job), "location": f"/v1/images/jobs/{job.id}"},
    )


async def get_job(request: Request) -> Response:
    """GET /v1/images/jobs/{id}: status, and the images once it succeeded."""
    gateway = gateway_of(request)
    job = gateway.jobs.get(request.path_params["job_id"])
    if job is None:  # maybe another replica's: the ledger has every job (jobs.py)
        stored = await gateway.stored_job(request.path_params["job_id"], str(request.base_url))
        if stored is not None:
            return JSONResponse(stored, headers={"x-imagerouter-job-id": stored["id"]})
        raise not_found("No such job (jobs are kept in memory while the gateway runs; the "
                        "ledger has every request).")
    body = job.summary()
    if job.status == "succeeded":
        body["result"] = await gateway.images_body(job, job.response_format,
                                                   str(request.base_url))
    return JSONResponse(body, headers=gateway.job_headers(job))


async def list_jobs(request: Request) -> Response:
    """GET /v1/images/jobs?limit=N: the newest jobs of every replica first, without
    images."""
    gateway = gateway_of(request)
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIST:
        raise bad_request(f"limit must be a whole number from 1 to {_MAX_LIST}", param="limit")
    # Every replica's jobs (the job store), this replica's with their live state.
    return JSONResponse({"object": "list", "data": await gateway.jobs.listing(int(raw))})


async def variations(request: Request) -> Response:
    """POST /v1/images/variations: OpenAI's own answer for GPT Image models (DALL-E 2 alone
    made variations, and it is retired)."""
    raise bad_request(
        "Variations are not supported for the models served here (only dall-e-2 had them, "
        "and it is retired); use /v1/images/edits.",
        param="model", code="unsupported_model",
    )


async def get_signed_file(request: Request) -> Response:
    """GET /v1/signed/{path}?expires=..&sig=..: no key needed while the signature holds."""
    gateway = gateway_of(request)
    query = request.query_params
    path = gateway.signer.check(request.path_params["path"], query.get("expires"),
                                query.get("sig"))
    if path is None:
        raise ApiError(403, "This image URL is invalid or has expired.", code="url_expired")
    media_type = MEDIA_TYPES.get(path.suffix.lstrip(".").replace("jpg", "jpeg"),
                                 "application/octet-stream")
    return FileResponse(path, media_type=media_type, filename=path.name,
                        content_disposition_type="inline")


async def get_file(request: Request) -> Response:
    """GET /v1/files/{id} and /v1/files/{id}/content: the image bytes."""
    gateway = gateway_of(request)
    stored = await gateway.files.get(request.path_params["file_id"])
    if stored is None:
        raise not_found("No such file.")
    return FileResponse(stored.path, media_type=stored.media_type, filename=stored.filename,
                        content_disposition_type="inline")

"""An emulator of OpenAI's Images API (`POST /v1/images/generations`, `POST /v1/images/edits`),
on the shared emulation base (imagerouter.emulation): latency, fault injection, counters,
placeholder images.

It answers as OpenAI does: JSON `ImagesResponse` with base64 images and `usage`, or an SSE
stream of `*.partial_image` events (sometimes fewer than asked, as OpenAI allows) and one
`*.completed` event; errors as `{"error": {message, type, param, code}}`. Both `/v1/images/…`
and `/images/…` are served, so a base URL with or without `/v1` works (the official client
wants the `/v1`). Faults on `create`: status codes, `reset` (nothing made), `reset_after_send`
(made and billed, then the connection drops; mid-stream for a stream), `hang`, `created_500`,
`malformed`, `task_failed` (a content refusal). A prompt containing `[refuse]` is refused by
the "safety system" (400 `moderation_blocked`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from imagerouter.emulation import (
    ConnectionDropped,
    EmulatorApp,
    EmulatorCounters,
    EmulatorOptions,
    Fault,
    drop_connection,
    render_image,
)

from .mapping import size_problem
from .tokens import TokenRates, estimate_text_tokens, output_tokens

if TYPE_CHECKING:
    from .provider import OpenAIProvider

__all__ = ["OpenAIEmulator", "build_emulator"]

_FORMATS = ("png", "jpeg", "webp")
_BACKGROUNDS = ("auto", "opaque", "transparent")
_REFUSE = "[refuse]"
_AUTO_SIZE = (1024, 1024)
_INPUT_IMAGE_TOKENS = 1500


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


_STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    402: ("You exceeded your current quota.", "insufficient_quota", "insufficient_quota"),
    403: ("Your organization must be verified to use this model.", "invalid_request_error", None),
    422: ("Unprocessable request.", "invalid_request_error", None),
    429: ("Rate limit reached for images per minute.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def _fault_response(fault: Fault) -> JSONResponse:
    status = fault.status_code or 500
    message, type_, code = _STATUS_ERRORS.get(status, ("error", "server_error", None))
    headers: dict[str, str] = {}
    if status == 429 and fault.retry_after is not None:
        headers["retry-after"] = f"{fault.retry_after:g}"
        headers["retry-after-ms"] = str(int(fault.retry_after * 1000))
    return error_response(status, message, type_=type_, code=code, headers=headers)


class OpenAIEmulator:
    """The routes and their state. Thread-safe where uvicorn's thread meets the tests'."""

    def __init__(self, provider: OpenAIProvider, options: EmulatorOptions) -> None:
        self.provider = provider
        self.options = options
        self.counters = EmulatorCounters()
        self.capabilities = provider.capabilities()
        self.prices = provider.price_table()
        self._rng = options.make_rng()
        self._lock = threading.Lock()
        self._serial = 0

    # -- helpers ----------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self.options.api_key

    def _random(self) -> float:
        with self._lock:
            return self._rng.random()

    def _next_seed(self) -> int:
        with self._lock:
            self._serial += 1
            return self._serial

    async def _delay(self, operation: str) -> None:
        with self._lock:
            seconds = self.options.latency_for(operation).sample(self._rng)
        if seconds > 0:
            await asyncio.sleep(seconds)

    # -- validation -------------------------------------------------------------------------

    def _model_caps(self, model: Any) -> tuple[str, Mapping[str, Any]]:
        if not isinstance(model, str) or not model:
            raise _BadRequest("Specify a model explicitly.", "model", "missing_required_parameter")
        models: Mapping[str, Any] = self.capabilities.get("models") or {}
        for name, caps in models.items():
            if model == name or model in (caps.get("snapshots") or ()):
                return name, caps
        raise _BadRequest(f"The model `{model}` does not exist.", "model", "model_not_found")

    def _size(self, value: Any) -> tuple[int, int]:
        if value in (None, "auto"):
            return _AUTO_SIZE
        text = str(value)
        left, sep, right = text.partition("x")
        if not sep or not left.isdigit() or not right.isdigit():
            raise _BadRequest(f"Invalid size '{text}'.", "size")
        width, height = int(left), int(right)
        problem = size_problem(width, height, self.capabilities.get("custom_size") or {})
        if problem is not None:
            raise _BadRequest(f"Invalid size '{text}': {problem}.", "size")
        return width, height

    def _check(self, body: Mapping[str, Any], operation: str) -> dict[str, Any]:
        """The request's settings, or _BadRequest as OpenAI words it."""
        model, caps = self._model_caps(body.get("model"))
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _BadRequest("prompt is required.", "prompt", "missing_required_parameter")
        quality = str(body.get("quality") or "auto")
        if quality != "auto" and quality not in caps.get("qualities", ()):
            raise _BadRequest(f"Invalid quality '{quality}' for {model}.", "quality")
        fmt = str(body.get("output_format") or "png")
        if fmt not in _FORMATS:
            raise _BadRequest(f"Invalid output_format '{fmt}'.", "output_format")
        background = str(body.get("background") or "auto")
        if background not in _BACKGROUNDS:
            raise _BadRequest(f"Invalid background '{background}'.", "background")
        if background == "transparent" and fmt == "jpeg":
            raise _BadRequest("Transparent background requires png or webp.", "background")
        n = _int(body.get("n", 1), "n", 1, 10)
        stream = _bool(body.get("stream"))
        partials = _int(body.get("partial_images", 0), "partial_images", 0, 3)
        if body.get("input_fidelity") is not None and not caps.get("input_fidelity", False):
            raise _BadRequest(f"input_fidelity is not supported for {model}.", "input_fidelity")
        if body.get("moderation") not in (None, "low", "auto"):
            raise _BadRequest("Invalid moderation.", "moderation")
        if body.get("output_compression") is not None:
            _int(body["output_compression"], "output_compression", 0, 100)
        if _REFUSE in prompt:
            raise _BadRequest(
                "Your request was rejected by the safety system. safety_violations=[emulated].",
                None,
                "moderation_blocked",
            )
        width, height = self._size(body.get("size"))
        return {
            "model": model,
            "prompt": prompt,
            "quality": "high" if quality == "auto" else quality,
            "format": fmt,
            "background": "transparent" if background == "transparent" else "opaque",
            "n": n,
            "stream": stream,
            "partials": partials if stream else 0,
            "width": width,
            "height": height,
            "operation": operation,
        }

    # -- billing ----------------------------------------------------------------------------

    def _usage(self, job: Mapping[str, Any], images_in: int, partials_sent: int) -> dict[str, Any]:
        model, quality = job["model"], job["quality"]
        per_image = output_tokens(self.prices, model, quality, job["width"], job["height"])
        if per_image is None:
            # No published count for this model (2.5/2.6): a rough stand-in, emulated only.
            per_image = math.ceil(job["width"] * job["height"] / 750)
        text = estimate_text_tokens(job["prompt"])
        image_tokens = images_in * _INPUT_IMAGE_TOKENS
        output = per_image * job["n"] + 100 * partials_sent
        return {
            "input_tokens": text + image_tokens,
            "input_tokens_details": {"text_tokens": text, "image_tokens": image_tokens},
            "output_tokens": output,
            "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
            "total_tokens": text + image_tokens + output,
        }

    def _bill(self, model: str, usage: Mapping[str, Any]) -> None:
        self.counters.bump("created")
        rates = TokenRates.lookup(self.prices, model)
        if rates is None:
            return
        details = usage["input_tokens_details"]
        cost = (
            details["text_tokens"] * rates.text_in
            + details["image_tokens"] * rates.image_in
            + usage["output_tokens"] * rates.image_out
        ) / Decimal(1_000_000)
        self.counters.add_billed(cost)

    def _image(self, job: Mapping[str, Any], label: str, source: bytes | None) -> str:
        data = render_image(
            job["prompt"],
            job["width"],
            job["height"],
            job["format"],
            transparent=job["background"] == "transparent",
            seed=self._next_seed(),
            label=label,
            source=source,
        )
        return base64.b64encode(data).decode("ascii")

    # -- routes -----------------------------------------------------------------------------

    async def generations(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return error_response(400, "The body must be a JSON object.")
        return await self._serve(request, body, "generate", [], None)

    async def edits(self, request: Request) -> Response:
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                return error_response(400, "We could not parse the JSON body of your request.")
            if not isinstance(body, dict):
                return error_response(400, "The body must be a JSON object.")
            refs = [b"" for _ in body.get("images") or ()]
            return await self._serve(request, body, "edit", refs, None)
        form = await request.form(max_part_size=self.options.max_upload_bytes)
        fields: dict[str, Any] = {}
        images: list[bytes] = []
        mask: bytes | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                if key in ("image", "image[]"):
                    images.append(data)
                elif key == "mask":
                    mask = data
            else:
                fields[key] = value
        return await self._serve(request, fields, "edit", images, mask)

    async def _serve(
        self,
        request: Request,
        body: Mapping[str, Any],
        operation: str,
        images: list[bytes],
        mask: bytes | None,
    ) -> Response:
        if not self._authorized(request):
            return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        fault = self.options.faults.draw("create")
        if fault is not None and fault.status_code is not None:
            self.counters.bump_fault("create", fault.kind)
            return _fault_response(fault)
        if fault is not None and fault.kind == "reset":
            self.counters.bump_fault("create", fault.kind)
            await drop_connection(request)
            return Response(status_code=500)  # discarded: the connection is gone
        if fault is not None and fault.kind == "task_failed":
            self.counters.bump_fault("create", fault.kind)
            self.counters.bump("failed")
            return error_response(
                400,
                "Your request was rejected by the safety system. safety_violations=[emulated].",
                type_="image_generation_user_error",
                code="moderation_blocked",
            )
        try:
            if operation == "edit":
                if not images or len(images) > int(self.capabilities.get("max_input_images", 16)):
                    raise _BadRequest("Provide 1 to 16 images to edit.", "image")
                for data in [*images, *([mask] if mask is not None else [])]:
                    if data:
                        _check_image(data)
            job = self._check(body, operation)
        except _BadRequest as exc:
            type_ = "image_generation_user_error" if exc.code == "moderation_blocked" else None
            return error_response(
                400,
                exc.message,
                type_=type_ or "invalid_request_error",
                param=exc.param,
                code=exc.code,
            )
        if fault is not None:
            self.counters.bump_fault("create", fault.kind)
        await self._delay(operation)
        source = images[0] if images and images[0] else None
        if job["stream"]:
            return self._stream(request, job, len(images), source, fault)
        usage = self._usage(job, len(images), 0)
        items = [
            {"b64_json": self._image(job, f"{index + 1}/{job['n']}", source)}
            for index in range(job["n"])
        ]
        self._bill(job["model"], usage)  # the job ran: from here on it is billed
        kind = fault.kind if fault is not None else None
        if kind == "reset_after_send":
            await drop_connection(request)
            return Response(status_code=500)
        if kind in ("hang", "task_stuck"):
            await asyncio.sleep(self.options.hang_seconds)
        if kind == "created_500":
            return error_response(
                500, "The server had an error while processing your request.", type_="server_error"
            )
        answer = {
            "created": int(time.time()),
            "data": items,
            "background": job["background"],
            "output_format": job["format"],
            "quality": job["quality"],
            "size": f"{job['width']}x{job['height']}",
            "usage": usage,
        }
        if kind == "malformed":
            return Response(json.dumps(answer)[:200], 200, media_type="application/json")
        return JSONResponse(answer, headers={"x-request-id": f"req_{uuid.uuid4().hex[:24]}"})

    def _stream(
        self,
        request: Request,
        job: dict[str, Any],
        images_in: int,
        source: bytes | None,
        fault: Fault | None,
    ) -> Response:
        kind = "image_edit" if job["operation"] == "edit" else "image_generation"
        asked = job["partials"]
        # OpenAI may finish before sending every partial asked for: sometimes send fewer.
        sent = asked if asked == 0 or self._random() < 0.7 else int(self._random() * asked)
        usage = self._usage(job, images_in, sent)
        self._bill(job["model"], usage)
        fault_kind = fault.kind if fault is not None else None
        common = {
            "created_at": int(time.time()),
            "size": f"{job['width']}x{job['height']}",
            "quality": job["quality"],
            "background": job["background"],
            "output_format": job["format"],
        }

        async def events() -> AsyncIterator[bytes]:
            for index in range(sent):
                data = {
                    "type": f"{kind}.partial_image",
                    "b64_json": self._image(job, f"partial {index + 1}", source),
                    "partial_image_index": index,
                    **common,
                }
                yield _sse(f"{kind}.partial_image", data)
                if fault_kind == "reset_after_send":
                    raise ConnectionDropped("stream cut on purpose (emulated fault)")
            if fault_kind == "reset_after_send":
                raise ConnectionDropped("stream cut on purpose (emulated fault)")
            if fault_kind in ("hang", "task_stuck"):
                await asyncio.sleep(self.options.hang_seconds)
            done = {
                "type": f"{kind}.completed",
                "b64_json": self._image(job, "1/1", source),
                "usage": usage,
                **common,
            }
            text = _sse(f"{kind}.completed", done)
            yield text[:200] if fault_kind == "malformed" else text

        return StreamingResponse(events(), media_type="text/event-stream")


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _int(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _BadRequest(f"Invalid {name} '{value}'.", name) from None
    if isinstance(value, bool) or not low <= number <= high:
        raise _BadRequest(f"{name} must be between {low} and {high}.", name)
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def _check_image(data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception:
        raise _BadRequest("Invalid image file or mode.", "image", "invalid_image_format") from None


def build_emulator(provider: OpenAIProvider, options: EmulatorOptions) -> EmulatorApp:
    emulator = OpenAIEmulator(provider, options)
    routes = []
    for prefix in ("/v1", ""):
        routes.append(Route(f"{prefix}/images/generations", emulator.generations, methods=["POST"]))
        routes.append(Route(f"{prefix}/images/edits", emulator.edits, methods=["POST"]))
    app = Starlette(routes=routes)
    return EmulatorApp(provider=provider.name, app=app, options=options, counters=emulator.counters)

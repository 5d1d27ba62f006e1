"""An emulator of RunAPI's HTTP API for GPT Image 2 / 1.5, as a starlette app.

Speaks the same wire protocol as runapi.ai (as far as /work/shared/provider-apis/runapi.md
knows it, and as RunAPI's official Python SDKs expect it): Bearer auth, the four create
endpoints with 422 validation, `Idempotency-Key` replay (`task_replayed: true`) and 409 on
reuse with other input, tasks that go pending -> processing -> completed/failed on the
latency model, PNG results served from its own `/files/{id}`, `usage.cost` and `billing` on
finished tasks, uploads (emulator_files.py) and the balance endpoint. Faults come from
`options.faults` (see imagerouter.emulation.FaultPlan) on create, poll, upload and download.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerouter.emulation import (
    EmulatedJob,
    EmulatorApp,
    EmulatorOptions,
    Fault,
    answer_after_create,
    emulator_app,
    fate_of,
)

from .capabilities import RunAPICapabilities
from .emulator_files import file_routes
from .emulator_prices import price_routes
from .emulator_state import (
    EmulatorState,
    IdempotencyRecord,
    RequestIdMiddleware,
    apply_common_fault,
    error_response,
    iso,
    json_response,
    usd_to_cents,
)
from .emulator_validation import TaskInput, image_size, validate_create
from .wire import MODEL_FOR_SERVICE, OPERATION_FOR_ACTION

if TYPE_CHECKING:
    from .provider import RunAPIProvider

__all__ = ["build_emulator"]

_STATUS = {"queued": "pending", "running": "processing", "succeeded": "completed",
           "failed": "failed"}
_FAILURE = "Upstream generation failed (emulated)"


def build_emulator(
    provider: RunAPIProvider,
    options: EmulatorOptions,
    *,
    clock: Callable[[], float] | None = None,
) -> EmulatorApp:
    """The emulator app. `clock` (default time.monotonic) lets tests move time by hand."""
    state = EmulatorState(
        options=options, prices=provider.price_table(), clock=clock or time.monotonic
    )
    tasks = _TaskRoutes(state, RunAPICapabilities.from_mapping({}))
    routes = [
        *file_routes(state),  # first: /api/v1/files/prepare would also match a create route
        *price_routes(lambda: state.prices),  # GET /api/v1/price_schedules (emulator_prices.py)
        Route("/api/v1/{service}/{action}", tasks.create, methods=["POST"]),
        Route("/api/v1/{service}/{action}/{task_id}", tasks.poll, methods=["GET"]),
        Route("/api/v1/{service}/{task_id}", tasks.poll, methods=["GET"]),
    ]
    return emulator_app(
        provider.name, state, routes, middleware=[Middleware(RequestIdMiddleware)]
    )


class _TaskRoutes:
    def __init__(self, state: EmulatorState, capabilities: RunAPICapabilities) -> None:
        self.state = state
        self.capabilities = capabilities

    async def create(self, request: Request) -> Response:
        state = self.state
        service, action = request.path_params["service"], request.path_params["action"]
        model = MODEL_FOR_SERVICE.get(service)
        if model is None or action not in OPERATION_FOR_ACTION:
            return error_response(404, "Not found", code="not_found")
        if not state.authorized(request):
            return error_response(401, "Unauthorized")
        fault = state.options.faults.draw("create")
        early = await apply_common_fault(state, request, "create", fault)
        if early is not None:
            return early
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error_response(400, "Bad input")
        task, errors = validate_create(model, action, body, self.capabilities)
        if task is None:
            return error_response(422, "Validation failed", fields=errors)
        key = request.headers.get("idempotency-key", "").strip()
        if len(key) > 512:
            return error_response(
                422, "Validation failed",
                fields={"Idempotency-Key": ["is too long (maximum is 512 characters)"]},
            )
        fingerprint = hashlib.sha256(
            json.dumps([request.url.path, body], sort_keys=True).encode()
        ).hexdigest()

        now = state.now()
        with state.lock:
            record = state.idempotency.get(key) if key else None
            if record is None:
                job = self._new_job(task, service, action, request, fault, now)
                state.book.add(job)
                if key:
                    state.idempotency[key] = IdempotencyRecord(fingerprint, job.id)
        if record is not None:
            if record.fingerprint != fingerprint:
                return json_response(
                    {"error": {"code": "idempotency_key_reused",
                               "message": "Idempotency-Key was already used with different "
                                          "input"}},
                    409,
                )
            replayed = state.book.get(record.job_id)
            assert replayed is not None
            state.counters.bump("replayed")
            return self._task_response(request, replayed, now, replayed=True)
        state.counters.bump("created")
        return await self._after_create(request, job, fault, now)

    def _new_job(
        self,
        task: TaskInput,
        service: str,
        action: str,
        request: Request,
        fault: Fault | None,
        now: float,
    ) -> EmulatedJob:
        operation = OPERATION_FOR_ACTION[action]
        width, height = image_size(task)
        if task.model == "gpt-image-2":
            dimension = task.output_resolution or "1k"
        else:
            dimension = task.quality or "*"
        cost = self.state.prices.lookup(task.model, operation, dimension) or Decimal(0)
        return EmulatedJob(
            id=EmulatedJob.new_id(),
            created_at=now,
            duration=self.state.sample_latency(operation),
            fate=fate_of(fault),
            width=width,
            height=height,
            fmt="png",
            count=1,
            prompt=task.prompt,
            cost=cost,
            # An edit is drawn from its input when it is an upload to this emulator.
            source=self.state.book.source_image(task.source_image_urls),
            extra={
                "service": service,
                "action": action,
                "model": task.model,
                "created_at": iso(),
                "client_request_id": request.headers.get("x-client-request-id"),
                "idempotency_key": request.headers.get("idempotency-key"),
                "source_image_urls": list(task.source_image_urls),
                "callback_url": task.callback_url,
            },
        )

    async def _after_create(
        self, request: Request, job: EmulatedJob, fault: Fault | None, now: float
    ) -> Response:
        """The faults that strike after the job exists, else the normal answer."""
        answer = await answer_after_create(
            self.state, request, fault,
            error_response=lambda status, message: error_response(status, message),
            malformed_response=lambda: Response(
                f'{{"id": "{job.id}", "status": ', 200, media_type="application/json"
            ),
        )
        return answer or self._task_response(request, job, now, replayed=False)

    async def poll(self, request: Request) -> Response:
        state = self.state
        if not state.authorized(request):
            return error_response(401, "Unauthorized")
        state.counters.bump("polls")
        fault = state.options.faults.draw("poll")
        early = await apply_common_fault(state, request, "poll", fault)
        if early is not None:
            return early
        if fault is not None and fault.kind == "malformed":
            state.counters.bump_fault("poll", fault.kind)
            return Response("<html>upstream</html", 200, media_type="application/json")
        job = state.book.get(request.path_params["task_id"])
        action = request.path_params.get("action")
        if (
            job is None
            or job.extra["service"] != request.path_params["service"]
            or (action is not None and job.extra["action"] != action)
        ):
            return error_response(404, "Task not found", code="not_found")
        return self._task_response(request, job, state.now(), replayed=None)

    def _task_response(
        self, request: Request, job: EmulatedJob, now: float, *, replayed: bool | None
    ) -> Response:
        headers = {"X-RunAPI-Task-Id": job.id}
        client_ref = request.headers.get("x-client-request-id")
        if client_ref:
            headers["X-Client-Request-Id"] = client_ref
        return json_response(self._envelope(request, job, now, replayed), 200, headers)

    def _envelope(
        self, request: Request, job: EmulatedJob, now: float, replayed: bool | None
    ) -> dict[str, Any]:
        status = _STATUS[job.state(now)]
        cents = usd_to_cents(job.cost)
        data: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "model": job.extra["model"],
            "created_at": job.extra["created_at"],
        }
        if replayed is not None:
            data["task_replayed"] = replayed
        billing: dict[str, Any] = {
            "reservation": {"amount_cents": cents},
            "settlement": None,
            "refund": None,
        }
        if status == "completed":
            base = str(request.base_url).rstrip("/")
            files = self.state.book.files_for(job)
            data["images"] = [{"url": f"{base}/files/{file_id}"} for file_id in files]
            data["usage"] = {"cost": float(job.cost), "generated_images": len(files)}
            billing["settlement"] = {
                "charged_amount_cents": cents,
                "amount_micro_cents": int(job.cost * 100_000_000),
            }
        elif status == "failed":
            data["error"] = _FAILURE
            billing["refund"] = {"refunded_at": iso()}
        data["billing"] = billing
        return data

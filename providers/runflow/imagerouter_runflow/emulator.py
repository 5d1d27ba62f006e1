"""An emulator of Runflow's HTTP API (the parts imagerouter uses), as a starlette app.

Routes: `POST /v1/models/{model_id}/runs`, `GET /v1/runs/{id}`, `GET /v1/runs` (filtered by
`q` and `client_ref`, paged by `pq`), the three asset-upload steps (the PUT goes to this
emulator's `/uploads/{asset_id}`), `GET /v1/health`, and `GET /files/{id}` for results.
Faults come from `options.faults` per endpoint (create, poll, find, upload, download).
Runs are billed from the shipped price table when they succeed; failed runs are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagerouter.emulation import (
    EmulatedJob,
    EmulatorApp,
    EmulatorOptions,
    answer_after_create,
    emulator_app,
    fate_of,
    route_table,
    state_of,
)

from .emulator_http import ApiBase, error, malformed
from .emulator_state import RunflowEmulatorOptions, RunflowEmulatorState, job_cost
from .emulator_storage import StorageApi
from .emulator_validation import MODELS, validate_run

if TYPE_CHECKING:
    from .provider import RunflowProvider

__all__ = ["build_emulator", "emulator_state"]


def emulator_state(emulator: EmulatorApp) -> RunflowEmulatorState:
    """The Runflow emulator's state behind an EmulatorApp (test hooks: `force_status`...)."""
    state = state_of(emulator)
    assert isinstance(state, RunflowEmulatorState)
    return state


def build_emulator(provider: RunflowProvider, options: EmulatorOptions) -> EmulatorApp:
    if not isinstance(options, RunflowEmulatorOptions):
        options = RunflowEmulatorOptions(
            **{name: getattr(options, name) for name in EmulatorOptions.__dataclass_fields__}
        )
    state = RunflowEmulatorState(options=options, prices=provider.price_table())
    runs, storage = _RunsApi(state), StorageApi(state)
    routes = route_table(
        ("GET /v1/health", runs.health),
        ("POST /v1/models/{model_id:path}/runs", runs.create_run),
        ("GET /v1/runs", runs.list_runs),
        ("GET /v1/runs/{run_id}", runs.get_run),
        ("POST /v1/asset-uploads", storage.create_upload),
        ("PUT /uploads/{asset_id}", storage.put_upload),
        ("POST /v1/asset-uploads/{asset_id}/confirmations", storage.confirm_upload),
        ("GET /files/{file_id}", storage.file),
    )
    return emulator_app(
        provider.name, state, routes, middleware=[Middleware(_SettleFirst, state=state)]
    )


class _SettleFirst:
    """Bill finished runs before every request: billing follows time, not polls."""

    def __init__(self, app: Any, state: RunflowEmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.state.settle()
        await self.app(scope, receive, send)


class _RunsApi(ApiBase):
    """Runs: create, poll, list; and the health check."""

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": "emulator"})

    async def create_run(self, request: Request) -> Response:
        if not self._authorized(request):
            return error(401, "Missing or invalid API key", "UNAUTHORIZED")
        model_id = request.path_params["model_id"]
        spec = MODELS.get(model_id)
        if spec is None:
            return error(404, f"Model {model_id!r} not found", "MODEL_NOT_FOUND")
        body = await self._json(request)
        if not isinstance(body, Mapping):
            return error(
                422,
                "The body must be a JSON object",
                "VALIDATION_ERROR",
                [{"field": "body", "message": "must be a JSON object"}],
            )
        shape, problems = validate_run(spec, body, max_images=self.options.max_images_per_run)
        if shape is None:
            errors = [{"field": name, "message": text} for name, text in problems]
            return error(422, "Validation failed", "VALIDATION_ERROR", errors)
        fault = self._draw("create")
        if fault is not None and (fault.status_code is not None or fault.kind == "reset"):
            return await self._common_fault(request, fault) or Response(status_code=500)

        kind = fault.kind if fault else None
        request_id = EmulatedJob.new_id()
        job = EmulatedJob(
            id=EmulatedJob.new_id(),
            created_at=self.state.now(),
            duration=self.state.sample_latency(spec.operation),
            fate=fate_of(fault),
            width=shape.width,
            height=shape.height,
            fmt=shape.fmt,
            count=shape.count,
            prompt=shape.prompt,
            cost=job_cost(
                self.state.prices,
                spec.model,
                spec.operation,
                shape.quality,
                shape.size_key,
                shape.count,
            ),
            transparent=shape.transparent,
            # An edit is drawn from its input (a data: URI or an upload to this emulator).
            source=self.state.book.source_image(_image_urls(body["input"])),
            extra={
                "model_id": model_id,
                "input": dict(body["input"]),
                "client_ref": body.get("client_ref"),
                "metadata": body.get("metadata"),
                "callback_url": body.get("callback_url"),
                "request_id": request_id,
            },
        )
        if kind == "task_failed":
            job.extra["failure_code"] = "PROVIDER_ERROR"
            job.extra["failure_message"] = "the upstream model failed (emulated fault)"
        self.state.book.add(job)
        self.counters.bump("created")

        answer = await answer_after_create(
            self.state, request, fault, error_response=error, malformed_response=malformed,
            count=False,
        )
        if answer is not None:
            return answer
        run = self.state.run_object(job, self._base(request))
        return JSONResponse(run, status_code=201, headers={"Runflow-Request-Id": request_id})

    async def get_run(self, request: Request) -> Response:
        if not self._authorized(request):
            return error(401, "Missing or invalid API key", "UNAUTHORIZED")
        self.counters.bump("polls")
        answer = await self._common_fault(request, self._draw("poll"))
        if answer is not None:
            return answer
        job = self.state.book.get(request.path_params["run_id"])
        if job is None:
            return error(404, "Run not found", "RUN_NOT_FOUND")
        return JSONResponse(self.state.run_object(job, self._base(request)))

    async def list_runs(self, request: Request) -> Response:
        if not self._authorized(request):
            return error(401, "Missing or invalid API key", "UNAUTHORIZED")
        answer = await self._common_fault(request, self._draw("find"))
        if answer is not None:
            return answer
        params = request.query_params
        try:
            limit = min(500, max(1, int(params.get("limit", "50"))))
            offset = int(params.get("pq") or 0)
        except ValueError:
            return error(
                422,
                "limit and pq must be integers",
                "VALIDATION_ERROR",
                [{"field": "limit", "message": "must be an integer"}],
            )
        query, client_ref = params.get("q"), params.get("client_ref")
        jobs = [
            job
            for job in reversed(self.state.runs())  # newest first
            if (client_ref is None or job.extra.get("client_ref") == client_ref)
            and (query is None or _matches(job, query))
        ]
        page = jobs[offset : offset + limit]
        following = offset + limit if offset + limit < len(jobs) else None
        base = self._base(request)
        return JSONResponse(
            {
                "data": [self.state.run_object(job, base) for job in page],
                "pq": str(following) if following is not None else None,
                "total": len(jobs),
            }
        )


def _image_urls(data: Mapping[str, Any]) -> list[Any]:
    urls = data.get("image_urls")
    return list(urls) if isinstance(urls, list) else []


def _matches(job: EmulatedJob, query: str) -> bool:
    """`q` is a free-text filter: it matches the run id, client_ref or prompt."""
    haystack = " ".join(
        str(value) for value in (job.id, job.extra.get("client_ref"), job.prompt) if value
    )
    return query.lower() in haystack.lower()

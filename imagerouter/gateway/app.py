"""The OpenAI-compatible gateway as a Starlette app: `create_app(config)`.

```python
from imagerouter.config import load_config
from imagerouter.gateway import create_app

app = create_app(load_config("imagerouter.yaml"))   # serve it with uvicorn
```

Every request first passes `OriginGuard` (Host and Origin checks, CORS; guard.py) and is
logged by `AccessLog` with its query string redacted. Every route goes through `_endpoint`,
which checks the gateway key (except `/healthz` and the provider callbacks, which are verified
by signature), gives the request its share of the in-flight body bytes, turns every error into
OpenAI's error shape and counts the request for `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..budget import budget_scopes
from ..errors import ImageRouterError
from ..resume import sweep
from . import routes
from .access_log import AccessLog, redact_uvicorn_access_log
from .bodies import is_json, read_body, unsupported_media_type
from .callbacks import MAX_CALLBACK_BYTES, read_note, verify_signature
from .errors import ApiError, api_error_from, error_response, not_found
from .guard import OriginGuard
from .metrics import CONTENT_TYPE
from .openai_shapes import model_list
from .routes import gateway_of
from .service import Gateway

if TYPE_CHECKING:
    from ..config import Config
    from ..plugins import Plugins
    from ..router import Router

__all__ = ["create_app"]

log = logging.getLogger("imagerouter.gateway")

Handler = Callable[[Request], Awaitable[Response]]
_STARTED = int(time.time())


def create_app(
    config: Config, *, plugins: Plugins | None = None, router: Router | None = None
) -> Starlette:
    """The gateway app. `router`: use this Router (tests); otherwise one is built from
    `config` on first use, with callbacks when `gateway.public_base_url` is set."""
    gateway = Gateway(config, plugins=plugins, router=router)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The sweeper reconciles possibly-billed creates and collects uncollected jobs
        # (imagerouter/resume.py); it never touches the jobs this gateway is running.
        sweeper = asyncio.create_task(_sweeper(gateway, config.gateway.sweep_interval_s))
        # Callback nudges from other replicas (shared.url on Redis; service.py).
        nudges = None if gateway.nudges is None else asyncio.create_task(gateway.nudges.run())
        try:
            yield
        finally:
            if nudges is not None:
                nudges.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await nudges
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if gateway.sweep_lease is not None:
                await gateway.sweep_lease.release()  # the next replica need not wait
        await gateway.aclose()

    settings = gateway.settings
    redact_uvicorn_access_log()
    app = Starlette(
        routes=_routes(),
        middleware=[
            Middleware(AccessLog),
            Middleware(OriginGuard, allowed_hosts=settings.allowed_hosts,
                       cors_origins=settings.cors_origins,
                       public_base_url=settings.public_base_url),
        ],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app


async def _sweeper(gateway: Gateway, interval: float) -> None:
    """A resume pass every `interval` seconds (under the fleet's lease), each followed by
    ending the jobs dead replicas left open once their requests are settled (the pass just
    collected their images and closed their requests: gateway/orphaned_jobs.py)."""
    lease = gateway.sweep_lease
    while True:
        await sweep(lambda: gateway.router.deps, interval=interval, first_delay=True,
                    lease=lease, passes=1)
        try:
            if lease is None or await lease():  # renews: the pass above just held it
                await gateway.end_orphaned_jobs()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("sweeper: ending orphaned jobs failed", exc_info=True)


def _routes() -> list[Route]:
    def route(path: str, handler: Handler, name: str, methods: list[str], *,
              auth: bool = True) -> Route:
        return Route(path, _endpoint(handler, name, auth=auth), methods=methods)

    return [
        route("/v1/images/generations", routes.generations, "generations", ["POST"]),
        route("/v1/images/edits", routes.edits, "edits", ["POST"]),
        route("/v1/images/jobs", routes.create_job, "jobs", ["POST"]),
        route("/v1/images/jobs", routes.list_jobs, "jobs", ["GET"]),
        route("/v1/images/jobs/{job_id}", routes.get_job, "job", ["GET"]),
        route("/v1/files/{file_id}", routes.get_file, "file", ["GET"]),
        route("/v1/files/{file_id}/content", routes.get_file, "file", ["GET"]),
        # Signed image URLs go into `<img src>`: the signature stands in for the key.
        route("/v1/signed/{path:path}", routes.get_signed_file, "signed_file", ["GET"],
              auth=False),
        route("/v1/images/variations", routes.variations, "variations", ["POST"]),
        route("/v1/models", _models, "models", ["GET"]),
        route("/v1/models/{model_id}", _model, "model", ["GET"]),
        route("/metrics", _metrics, "metrics", ["GET"]),
        route("/healthz", _healthz, "healthz", ["GET"], auth=False),
        route("/callbacks/{provider}", _callback, "callback", ["POST"], auth=False),
    ]


def _endpoint(handler: Handler, name: str, *, auth: bool) -> Handler:
    async def endpoint(request: Request) -> Response:
        gateway = gateway_of(request)
        share = gateway.inflight.share()
        request.state.body_share = share
        try:
            # 401 / per-key 429; jobs started inside reserve under the key's budget scope.
            with budget_scopes(*(await gateway.admit(request, name) if auth else ())):
                response = await handler(request)
        except ApiError as exc:
            response = error_response(exc)
        except ImageRouterError as exc:
            response = error_response(api_error_from(exc))
        except HTTPException as exc:
            response = error_response(ApiError(exc.status_code, exc.detail))
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.url.path)
            response = error_response(api_error_from(exc))
        finally:
            share.release()
        gateway.metrics.http_request(name, request.method, response.status_code)
        return response

    return endpoint


async def _http_exception(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    message = f"Invalid URL ({request.method} {request.url.path})" if status == 404 else detail
    return error_response(ApiError(status, message, code="not_found" if status == 404 else None))


async def _models(request: Request) -> Response:
    return JSONResponse(model_list(gateway_of(request).config, _STARTED))


async def _model(request: Request) -> Response:
    wanted = request.path_params["model_id"]
    for model in model_list(gateway_of(request).config, _STARTED)["data"]:
        if model["id"] == wanted:
            return JSONResponse(model)
    raise not_found(f"The model '{wanted}' does not exist")


async def _healthz(request: Request) -> Response:
    """Liveness plus a summary: `ok` when some backend can be routed to, else `degraded`."""
    gateway = gateway_of(request)
    backends = gateway.router.health_snapshot()
    available = sum(1 for stats in backends if stats.available)
    return JSONResponse({
        "status": "ok" if available else "degraded",
        "backends_available": available,
        "backends": [
            {"provider": s.key[0], "model": s.key[1], "operation": s.key[2],
             "state": s.state.value, "available": s.available}
            for s in backends
        ],
        "jobs": gateway.jobs.counts(),
        "auth": gateway.auth.enabled,
    })


async def _metrics(request: Request) -> Response:
    gateway = gateway_of(request)
    text = gateway.metrics.render(gateway.router.health_snapshot(), gateway.jobs.counts())
    return PlainTextResponse(text, media_type=CONTENT_TYPE)


async def _callback(request: Request) -> Response:
    """POST /callbacks/{provider}: verify, dedupe, then nudge the job polling that task."""
    gateway = gateway_of(request)
    provider = request.path_params["provider"]
    if provider not in gateway.router.catalog.entries:
        raise not_found(f"no provider {provider!r} here")
    if not is_json(request):
        raise unsupported_media_type("application/json")
    body = await read_body(request, MAX_CALLBACK_BYTES, routes.body_share(request))
    try:
        verify_signature(gateway.router.catalog.entries[provider].provider, body,
                         request.headers, gateway.settings)
    except ApiError:
        gateway.metrics.callback(provider, "rejected")
        raise
    note = read_note(gateway.router.catalog.entries[provider].provider, body)
    if not gateway.replays.first_time(note.key):
        gateway.metrics.callback(provider, "duplicate")
        return JSONResponse({"received": True, "duplicate": True, "nudged": False})
    # Only a hint: the poll it triggers is an authenticated GET. A task no job here polls
    # (another process, or one already finished) is acknowledged and left to
    # `imagerouter resume`, which would otherwise race the jobs still running here.
    nudged = gateway.router.nudge(provider, note.task_id)
    if not nudged and gateway.nudges is not None:  # maybe another replica polls that task
        nudged = await gateway.nudges.publish(provider, note.task_id) > 1
    gateway.metrics.callback(provider, "nudged" if nudged else "not_polling")
    log.info("callback %s task=%s status=%s nudged=%s", provider, note.task_id, note.status,
             nudged)
    return JSONResponse({"received": True, "duplicate": False, "nudged": nudged})

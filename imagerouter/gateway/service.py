"""The gateway's state: config, the Router, jobs, served files, metrics, replay guard.

One `Gateway` per app. The Router is built on first use unless one is handed in: building it
touches no event loop (its HTTP client is bound to the running loop when first used), so it
works the same whether first used by a request or by `serve` checking the config early.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NoEligibleOfferError
from ..pricing import quantize
from ..redact import default_redactor
from ..router import Router
from . import answers
from .auth import KeyCheck, unauthorized
from .callbacks import ReplayGuard
from .files import FileStore, ledger_store
from .inflight import BodyShare, InflightBytes
from .jobs import Job, JobRecords, JobStore, install_event_relay
from .key_limits import PAID_ROUTES, KeyLimits, precheck_stream
from .metrics import Metrics
from .openai_shapes import shown
from .orphaned_jobs import end_orphaned_jobs
from .signed_urls import UrlSigner, load_url_secret

if TYPE_CHECKING:
    from starlette.requests import Request

    from ..budget import BudgetScope
    from ..config import Config, GatewaySettings
    from ..ledger import Ledger
    from ..plugins import Plugins
    from ..result import GenerationResult
    from ..stores.shared_redis import RedisNudges
    from .openai_shapes import ImageCall, ResponseFormat

__all__ = ["DRAIN_SECONDS", "Gateway"]

log = logging.getLogger("imagerouter.gateway")

DRAIN_SECONDS = 10.0  # at shutdown, running jobs get this long before they are cancelled


class Gateway:
    """Everything the routes share."""

    def __init__(
        self,
        config: Config,
        *,
        plugins: Plugins | None = None,
        router: Router | None = None,
    ) -> None:
        self.config = config
        self.settings: GatewaySettings = config.gateway
        self._plugins = plugins
        self._router = router
        self._owns_router = router is None
        self.auth = KeyCheck(self.settings.api_keys)
        # Per-key rpm windows and budget scopes (key_limits.py); a test may swap the clock.
        self.key_limits = KeyLimits(self.settings.api_keys, shared=config.shared)
        self.key_limits.check(config)
        # shared.url on Redis: callback nudges reach the replica polling the task.
        self.nudges: RedisNudges | None = None
        if config.shared.url.startswith(("redis://", "rediss://")):
            from ..stores.shared_redis import RedisNudges

            self.nudges = RedisNudges(
                config.shared.url, lambda p, t: self.router.nudge(p, t),
                prefix=config.shared.prefix,
            )
        # One sweeper per fleet: with a PostgreSQL ledger, on its advisory lock (pg_lease.py:
        # a dead holder's lock goes with its connection); else the shared.url lease
        # (stores/shared_lease.py); None with shared.url: memory and a SQLite ledger.
        from ..stores import is_postgres_url, ledger_url
        from ..stores.shared_lease import Lease, lease_for

        self.sweep_lease: Lease | None
        pg_url = ledger_url(config.ledger) if config.ledger.enabled else ""
        if is_postgres_url(pg_url):
            from ..stores.pg_lease import PgLease

            self.sweep_lease = PgLease(pg_url, f"{config.shared.prefix}lease:sweeper")
        else:
            self.sweep_lease = lease_for(
                config.shared.url,
                prefix=config.shared.prefix,
                ttl_s=3 * config.gateway.sweep_interval_s,  # a live holder renews in time
            )
        # Jobs and file ids also go to the ledger (jobs.py JobRecords, through the job store
        # stores/gateway_jobs.py), for other replicas.
        self.job_store = ledger_store(self._ledger)
        self.files = FileStore(store_of=self.job_store)
        self.jobs = JobStore(records=JobRecords(self.job_store, self.files))
        self.metrics = Metrics()
        self.replays = ReplayGuard()
        self.inflight = InflightBytes(self.settings.max_inflight_bytes)
        self.output_dir = Path(self.settings.output_dir or config.output.dir)
        url_secret = self.settings.url_secret
        self.signer = UrlSigner(
            load_url_secret(None if url_secret is None else url_secret.get_secret_value()),
            self.output_dir, ttl_s=self.settings.url_ttl_s, clock=time.time,
        )
        # Gateway keys and callback secrets join the provider keys in the log redactor.
        redactor = default_redactor()
        for secret in (*(k.key for k in self.settings.api_keys),
                       *self.settings.callback_secrets.values(),
                       self.settings.url_secret):
            redactor.add(secret)
        if router is not None:
            install_event_relay(router.plugins)

    @property
    def router(self) -> Router:
        if self._router is None:
            router = Router(
                self.config,
                plugins=self._plugins,
                callback_base_url=self.settings.public_base_url,
            )
            install_event_relay(router.plugins)
            self._router = router
        return self._router

    def _ledger(self) -> Ledger | None:
        return self.router.ledger

    async def stored_job(self, job_id: str, base_url: str) -> dict[str, Any] | None:
        """A job another replica ran (or this one forgot), as the ledger has it: its summary
        and, once it succeeded, its images by file id (url) or inline (b64_json)."""
        records = self.jobs.records
        stored = None if records is None else await records.load(job_id)
        if stored is None:
            return None
        body = dict(stored.summary)
        if stored.status == "succeeded":
            files = await self.files.for_job(job_id)
            base = self.public_base(base_url)
            if stored.response_format == "b64_json":
                data = [{"b64_json": base64.b64encode(await asyncio.to_thread(f.path.read_bytes))
                         .decode("ascii")} for f in files]
            else:
                data = [{"url": f"{base}/v1/files/{f.id}"} for f in files]
            body["result"] = {"created": body.get("created"), "data": data}
        return body

    async def admit(self, request: Request, route: str) -> tuple[BudgetScope, ...]:
        """Authenticate (401), count a paid call against its key's rpm (429), and return the
        budget scopes the request's reservations must also fit (its key's, key_limits.py)."""
        key = self.auth.identify(request.headers.get("authorization"))
        if self.auth.enabled and key is None:
            raise unauthorized()
        if request.method == "POST" and route in PAID_ROUTES:
            await self.key_limits.aadmit(key)  # fleet-wide on Redis (key_limits.py)
        scope = self.key_limits.scope(key)
        return () if scope is None else (scope,)

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, call: ImageCall, *, hold: BodyShare | None = None) -> Job:
        """Check the call (400s come now, not from a job), then start it as a job. `hold`:
        in-flight bytes the job keeps (its uploads) until it ends."""
        try:
            request = call.build_request()
            offers = self.router.quote_request(request)
            if not any(offer.eligible for offer in offers):
                raise NoEligibleOfferError("no backend can serve this request:", offers)
            precheck_stream(self.router, call, offers)  # a key over budget: 429 before the 200
        except BaseException:
            if hold is not None:
                hold.release()
            raise
        if hold is None:
            return self.jobs.start(call, self._run, on_done=self._finished,
                                   sink=self.metrics.event)

        def finished(job: Job) -> None:
            hold.release()
            self._finished(job)

        return self.jobs.start(call, self._run, on_done=finished, sink=self.metrics.event)

    async def _run(self, job: Job) -> GenerationResult:
        call = job.call
        assert call is not None
        options: dict[str, Any] = {
            **call.router_kwargs(),
            "output_dir": self.output_dir,
            "progress": job.note_progress,
            "request_id": job.ledger_request_id,  # in the job's row already
        }
        # Client text is clipped in logs (`shown`): a field's full value is never logged.
        log.info("job %s: %s model=%s user=%s", job.id, call.operation,
                 None if call.requested_model is None else shown(call.requested_model),
                 None if call.user is None else shown(call.user))
        if call.operation == "edit":
            result = await self.router.aedit(call.prompt, images=list(call.images), **options)
        else:
            result = await self.router.agenerate(call.prompt, **options)
        job.served_paths = await answers.served_paths(result, job.shape)
        return result

    def _finished(self, job: Job) -> None:
        if job.result is None:
            return
        paths = job.served_paths or [image.path for image in job.result.images]
        for image, path in zip(job.result.images, paths, strict=True):
            job.file_ids.append(self.files.add(path, image.format, job_id=job.id).id)

    async def end_orphaned_jobs(self) -> list[str]:
        """The sweeper's step after each pass: end the jobs dead replicas left open
        (orphaned_jobs.py); this process's own are never touched."""
        return await end_orphaned_jobs(self.job_store, running_here=self.jobs)

    async def wait(self, job: Job) -> None:
        """Wait for a job without ever cancelling it (a client that goes away, or a
        cancelled handler, leaves the job running)."""
        assert job.task is not None
        await asyncio.wait({job.task})

    # -- answers --------------------------------------------------------------------------

    async def images_body(
        self, job: Job, response_format: ResponseFormat, base_url: str
    ) -> dict[str, Any]:
        """OpenAI's ImagesResponse for a finished job (answers.py)."""
        base = self.public_base(base_url)
        result = job.result
        assert result is not None
        paths = job.served_paths or [image.path for image in result.images]
        by_path = {str(path): f"{base}/v1/files/{file_id}"
                   for path, file_id in zip(paths, job.file_ids, strict=True)}
        return await answers.images_body(job, response_format=response_format, base_url=base,
                                         signer=self.signer, file_url=by_path)

    def public_base(self, request_base: str) -> str:
        return (self.settings.public_base_url or request_base).rstrip("/")

    @staticmethod
    def job_headers(job: Job) -> dict[str, str]:
        headers = {"x-imagerouter-job-id": job.id}
        if job.request_id:
            headers["x-imagerouter-request-id"] = job.request_id
        result = job.result
        if result is not None:
            headers["x-imagerouter-provider"] = result.provider
            headers["x-imagerouter-model"] = result.model
            headers["x-imagerouter-cost-usd"] = str(quantize(result.cost_usd))
            if result.billed_usd is not None:
                headers["x-imagerouter-billed-usd"] = str(quantize(result.billed_usd))
            if result.cached:  # answered from the result cache (imagerouter/cache.py)
                headers["x-imagerouter-cache"] = "hit"
        return headers

    # -- lifecycle ------------------------------------------------------------------------

    async def aclose(self, *, drain_seconds: float = DRAIN_SECONDS) -> None:
        """At shutdown, on the serving loop: let running jobs finish, then close."""
        await self.jobs.drain(drain_seconds)
        if self.nudges is not None:
            await self.nudges.aclose()
        if self._router is not None and self._owns_router:
            await self._router.aclose()

    def close(self) -> None:
        """Release the Router this gateway built, once its serving loop has stopped (an app
        served without lifespan, as in tests)."""
        if self._router is not None and self._owns_router:
            self._router.close()

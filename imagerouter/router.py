"""The Router: the one object users hold.

```python
from imagerouter import Router

router = Router.from_config("imagerouter.yaml")
offers = router.quote("a lighthouse at dusk", quality="medium")
result = router.generate("a lighthouse at dusk", tier="standard", output_dir="out")
```

A Router owns its plugin manager (no process-global state), its HTTP client, its health
tracker, its ledger and its budget. Every async method has a sync twin; calling a sync twin
from inside a running event loop is an error that names the async one.

Sync twins run on the Router's portal (portal.py): one event loop in a background thread, so
one HTTP client and its pooled connections serve every sync call, from any number of threads.
Async callers get one client per event loop (transport.py's `LoopClients`), so a Router works
in any number of loops, one after another or side by side, and mixed with sync calls.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import SecretStr

from .budget import Budget, BudgetLimits, budget_scopes, current_scopes
from .cache import route_with_cache
from .clock import SYSTEM_CLOCK, Clock, Sleep, system_sleep
from .config import Config, load_config
from .errors import ConfigError, ImageRouterError, MissingApiKeyError, RequestValidationError
from .health import BackendStats, HealthPolicy, HealthTracker
from .idempotency import IdempotencyKey, IdempotencyStore, fingerprint, run_idempotent
from .inputs import check_mask, load_input
from .ledger import Ledger
from .ledger_commit import current_pending, deferred_commits
from .model_families import declare_model_families
from .outputs import ensure_writable_dir
from .plugins import Plugins
from .polling import AdaptiveSchedules, FixedSchedule, PollSchedule
from .portal import Portal
from .provider import FreeCheck
from .quoting import Catalog, quote
from .reconcile import RecoveryState
from .redact import default_redactor
from .request import MODELS, ImageInput, ImageRequest
from .resume import ResumeOutcome, resume_uncollected
from .route_deps import RouteDeps
from .routing import new_request_id
from .stores import ledger_url, open_ledger
from .transport import LimitedTransport, LoopClients
from .urls import HostPolicy

if TYPE_CHECKING:
    from .batch import BatchOutcome
    from .execution import Progress
    from .offers import Offer
    from .pricing import PriceTable
    from .provider import LoadedImage, Provider, ProviderClient
    from .result import GenerationResult

__all__ = ["Router"]

log = logging.getLogger("imagerouter")
_T = TypeVar("_T")

MAX_INPUT_BYTES = 50 * 1024 * 1024
HTTP_CONCURRENCY = 64  # requests in flight at once; more wait their turn (see transport.py)


class Router:
    """Routes image requests to the cheapest healthy provider, with failover."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        plugins: Plugins | None = None,
        ledger: Ledger | bool | None = True,
        health: HealthTracker | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Sleep = system_sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        schedule: Callable[[Offer], PollSchedule] | None = None,
        callback_base_url: str | None = None,
    ) -> None:
        self.config = config if config is not None else load_config()
        self.plugins = plugins if plugins is not None else Plugins.load()
        self.clock = clock
        self._sleep = sleep
        self._deps: RouteDeps | None = None  # built on first use: see `deps`
        self._transport = transport
        self._schedule = schedule
        self.config.check_providers(self.plugins.providers())
        self.catalog = Catalog.build(self.plugins.providers(), self.config)
        for entry in self.catalog.entries.values():
            families = entry.provider.model_families(entry.capabilities)
            declare_model_families(families, provider=entry.provider.name)
        # The process-wide redactor, so log filters installed by the CLI know our keys too.
        self.redactor = default_redactor()
        for name, entry in self.catalog.entries.items():
            # Every secret the provider says its settings hold (the key, by default).
            settings = self.config.provider_settings(name)
            for key in sorted(entry.provider.secret_settings):
                secret = getattr(settings, key, None)
                if isinstance(secret, SecretStr):
                    self.redactor.add(secret.get_secret_value())
        self.ledger = self._open_ledger(ledger)
        # Poll schedules learned per backend from the ledger's job durations (polling.py).
        self._adaptive = AdaptiveSchedules(
            self.ledger.latencies if self.ledger is not None else None,
            floors={name: e.provider.poll_floor_s for name, e in self.catalog.entries.items()},
            clock=clock,
        )
        self.budget = self._make_budget()
        self._owns_health = health is None  # closed with the Router (it may be shared)
        self.health = health or self._make_health(clock)
        self._loops = LoopClients(self._make_http)
        self._portal = Portal()
        # Interpreter exit stops the portal's thread (and closes its client) without hanging.
        self._finalizer = weakref.finalize(self, self._portal.close)
        self._resumed = False
        # Set only when a public URL reaches us (the gateway); providers then call back.
        self.callback_base_url = callback_base_url.rstrip("/") if callback_base_url else None
        self.waiters: dict[tuple[str, str], asyncio.Event] = {}
        # Interruptions to report, and the bookkeeping of possibly-billed recovery.
        self.recovery = RecoveryState()

    # -- what routing gets (route_deps.py) ----------------------------------------------

    @property
    def deps(self) -> RouteDeps:
        """What routing, accounting and resume get instead of the Router (route_deps.py):
        built once, on first use, so a test may still patch a method (`download_policy`)
        after construction. Its stores and bookkeeping are this Router's own objects (two
        threads racing here build equal deps over the same objects: harmless)."""
        deps = self._deps
        if deps is None:
            deps = self._deps = RouteDeps(
                config=self.config,
                catalog=self.catalog,
                ledger=self.ledger,
                budget=self.budget,
                health=self.health,
                clock=self.clock,
                sleep=self._sleep,
                quote_request=self.quote_request,
                client_for=self.client_for,
                http=self.http,
                schedule_for=self.schedule_for,
                download_policy=self.download_policy,
                emit=self.emit,
                recovery=self.recovery,
                waiters=self.waiters,
                callback_base_url=self.callback_base_url,
            )
        return deps

    @property
    def sleep(self) -> Sleep:
        return self._sleep

    @sleep.setter
    def sleep(self, sleep: Sleep) -> None:
        # Tests swap the sleep of a running gateway's Router; the next use rebuilds the deps.
        self._sleep = sleep
        self._deps = None

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, source: str | Path | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Router:
        """A Router from a YAML file, a dict, or (None) the usual search order."""
        plugins = kwargs.pop("plugins", None) or Plugins.load()
        config = load_config(source, known_providers=plugins.providers())
        return cls(config, plugins=plugins, **kwargs)

    def _open_ledger(self, ledger: Ledger | bool | None) -> Ledger | None:
        if isinstance(ledger, Ledger):
            return ledger
        if ledger is False or ledger is None or not self.config.ledger.enabled:
            return None
        return open_ledger(ledger_url(self.config.ledger))

    def _make_budget(self) -> Budget | None:
        cfg = self.config.budget
        limits = BudgetLimits(cfg.daily_usd, cfg.monthly_usd, cfg.total_usd)
        if self.ledger is not None:
            # Spend is reserved and settled even with no limit set, so a limit added later
            # counts what was spent before it.
            return Budget(limits, self.ledger)
        if limits == BudgetLimits():
            return None
        if self.ledger is None:
            raise ConfigError(
                "budgets are kept in the ledger; enable ledger (ledger.enabled: true)",
                file=self.config.source,
                line=self.config.locate("budget"),
                key="budget",
            )
        return Budget(limits, self.ledger)

    # -- providers ------------------------------------------------------------------------

    @property
    def providers(self) -> dict[str, Provider]:
        return {name: entry.provider for name, entry in self.catalog.entries.items()}

    def provider(self, name: str) -> Provider:
        return self.catalog.provider(name)

    def capabilities(self, name: str) -> Mapping[str, Any]:
        return self.catalog.entries[name].capabilities

    def prices(self) -> dict[str, PriceTable]:
        """The effective price tables (shipped data plus the config's overrides)."""
        return {name: entry.prices for name, entry in self.catalog.entries.items()}

    def _make_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=self._transport or LimitedTransport(HTTP_CONCURRENCY),
            follow_redirects=False,
            timeout=httpx.Timeout(60.0, connect=10.0),
            # Write-ahead: nothing leaves the process before the ledger rows behind it are
            # on disk (a request's writes defer their fsync until here: ledger_commit.py).
            event_hooks={"request": [_ledger_barrier]},
        )

    async def _durable(self, work: Awaitable[_T]) -> _T:
        """Run one request's work with its ledger commits deferred to the next HTTP request
        and to its end, where they are made durable together."""
        if self.ledger is None:
            return await work
        with deferred_commits() as pending:
            try:
                return await work
            finally:
                await pending.make_durable_async(final=True)

    def http(self) -> httpx.AsyncClient:
        """The HTTP client of the running event loop, reused by every call on that loop."""
        return self._loops.current().http

    def client_for(self, name: str) -> ProviderClient:
        """`name`'s provider client on the running loop's HTTP client."""
        built = self._loops.current().built
        client: ProviderClient | None = built.get(name)
        if client is None:
            entry = self.catalog.entries[name]
            client = entry.provider.client(entry.settings, self.http())
            self.redactor.add(entry.settings.resolve_api_key(entry.provider).get_secret_value())
            built[name] = client
        return client

    def download_policy(self, name: str) -> HostPolicy:
        """The hosts `name`'s result images may be downloaded from (imagerouter/urls.py)."""
        entry = self.catalog.entries[name]
        return HostPolicy.build(
            entry.provider.download_hosts,
            entry.settings.resolve_base_url(entry.provider),
            self.config.downloads.allowed_hosts,
        )

    def schedule_for(self, offer: Offer) -> PollSchedule:
        if self._schedule is not None:
            return self._schedule(offer)
        settings = self.config.provider_settings(offer.provider)
        if settings.poll_interval is not None:
            # An interval the user configured is kept as it is.
            return FixedSchedule(interval=settings.poll_interval)
        return self._adaptive.for_backend(offer.provider, offer.model, offer.operation)

    def callback_url(self, provider: str) -> str | None:
        return self.deps.callback_url(provider)

    def nudge(self, provider: str, task_id: str) -> bool:
        """A provider callback says task `task_id` changed: poll it now instead of waiting.
        Returns False when no job of this process is polling that task. The callback itself
        is never trusted; the poll that follows is an authenticated GET."""
        event = self.waiters.get((provider, task_id))
        if event is None:
            return False
        event.set()
        return True

    def emit(self, hook: str, **kwargs: Any) -> None:
        self.plugins.call_event_hook(hook, **kwargs)

    # -- quoting -------------------------------------------------------------------------

    def quote(self, prompt: str = "quote", **options: Any) -> list[Offer]:
        """Every backend's offer for this request, ranked: eligible and cheapest first."""
        return self.quote_request(ImageRequest.build(prompt=prompt, **options))

    def quote_request(self, request: ImageRequest) -> list[Offer]:
        return quote(self.catalog, request, self.config, latency_of=self._latency_of)

    def _latency_of(self, key: tuple[str, str, str]) -> float | None:
        return self.health.latency(key)

    # -- generation ----------------------------------------------------------------------

    async def agenerate(self, prompt: str, **options: Any) -> GenerationResult:
        """Generate images; returns when they are on disk."""
        return await self._durable(self._run(prompt, options))

    async def aedit(self, prompt: str, images: Any, **options: Any) -> GenerationResult:
        """Edit input images (paths, bytes, or URLs with allow_url_inputs=True)."""
        return await self._durable(self._run(prompt, {**options, "images": images}, edit=True))

    def generate(self, prompt: str, **options: Any) -> GenerationResult:
        return self._sync(lambda: self.agenerate(prompt, **options), "agenerate")

    def edit(self, prompt: str, images: Any, **options: Any) -> GenerationResult:
        return self._sync(lambda: self.aedit(prompt, images, **options), "aedit")

    async def aresume(self, *, output_dir: str | Path | None = None) -> list[ResumeOutcome]:
        """Collect accepted jobs whose images never reached disk, look possibly-billed
        creates up again, and close what a killed process left (see `imagerouter resume`).
        `output_dir` saves into another directory than each request's own."""
        self._resumed = True
        return await self._durable(
            resume_uncollected(
                self.deps, output_dir=Path(output_dir) if output_dir is not None else None
            )
        )

    def resume(self, *, output_dir: str | Path | None = None) -> list[ResumeOutcome]:
        return self._sync(lambda: self.aresume(output_dir=output_dir), "aresume")

    async def _run(
        self, prompt: str, options: dict[str, Any], *, edit: bool = False
    ) -> GenerationResult:
        if self.config.routing.resume_on_start and not self._resumed and self.ledger is not None:
            for outcome in await self.aresume():
                log.info("resume at start: %s %s", outcome.task_id, outcome.state)
        output_dir = Path(options.pop("output_dir", None) or self.config.output.dir)
        progress: Callable[[Progress], None] | None = options.pop("progress", None)
        raw_key = options.pop("idempotency_key", None)
        # The gateway names the request up front, so its job row links to it (a replay of an
        # idempotency key still answers as the first request).
        named_id: str | None = options.pop("request_id", None)
        # The gateway scopes keys by its caller's API key, so two tenants' keys never collide.
        scope = str(options.pop("idempotency_scope", "") or "")
        # The result cache (cache.py): None follows config `cache.enabled`.
        use_cache: bool | None = options.pop("cache", None)
        request = ImageRequest.build(prompt=prompt, **options)
        if edit and not request.images:
            # Without one, "edit" would quietly run (and bill) a generate.
            raise RequestValidationError(
                "images", "an edit needs at least one input image (a path, bytes or a URL)"
            )
        # Everything that can be refused is refused before the first paid call.
        await asyncio.to_thread(ensure_writable_dir, output_dir)
        inputs = [_load(item) for item in request.images]
        mask = _load(request.mask) if request.mask is not None else None
        check_mask(inputs, mask)
        if raw_key is None:
            return await route_with_cache(
                self, request, inputs, mask, output_dir, progress, request_id=named_id,
                use_cache=use_cache,
            )
        key = IdempotencyKey.of(raw_key, scope)
        if self.ledger is None:
            raise RequestValidationError(
                "idempotency_key", "needs the ledger (ledger.enabled: true) to remember keys"
            )

        async def run(request_id: str) -> GenerationResult:
            return await route_with_cache(
                self, request, inputs, mask, output_dir, progress, request_id=request_id,
                use_cache=use_cache,
            )

        return await run_idempotent(
            IdempotencyStore(self.ledger),
            key,
            fingerprint(request, inputs, mask),
            operation=request.operation,
            new_request_id=new_request_id if named_id is None else lambda: named_id,
            run=run,
            sleep=self.sleep,
        )

    # -- batches (imagerouter/batch/) -----------------------------------------------------

    def abatch(
        self, requests: Iterable[Mapping[str, Any]], *, concurrency: int = 4, **options: Any
    ) -> AsyncIterator[BatchOutcome]:
        """Run many requests (dicts of generate/edit fields, an optional `id`); yields each
        line's outcome as it finishes. See imagerouter.batch.run_requests for `options`."""
        from .batch import run_requests

        return run_requests(self, requests, concurrency=concurrency, **options)

    def batch(
        self, requests: Iterable[Mapping[str, Any]], *, concurrency: int = 4, **options: Any
    ) -> list[BatchOutcome]:
        """The sync twin of `abatch`: every line's outcome, in the order they finished."""

        async def collect() -> list[BatchOutcome]:
            return [item async for item in self.abatch(requests, concurrency=concurrency,
                                                        **options)]

        return self._sync(collect, "abatch")

    # -- health ---------------------------------------------------------------------------

    def health_snapshot(self) -> list[BackendStats]:
        # The backends each routable provider serves (its own model families); a provider
        # that is off (disabled, or waiting for its key) has none to report.
        keys = [
            (name, model, operation)
            for name, entry in self.catalog.entries.items()
            if _routable(entry)
            for model in entry.provider.model_families(entry.capabilities) or MODELS
            for operation in ("generate", "edit")
        ]
        return self.health.snapshot(keys)

    async def afree_checks(self) -> dict[str, FreeCheck | None]:
        """Run each provider's free check (RunAPI balance, Runflow health): never a paid job.
        A provider that fails its check gets `FreeCheck(ok=False, detail=...)`."""
        checks: dict[str, FreeCheck | None] = {}
        for name in self.catalog.entries:
            try:
                check = await self.client_for(name).free_check()
            except ImageRouterError as exc:
                check = FreeCheck(ok=False, detail=str(exc))
            if check is not None and check.balance_usd is not None:
                self.health.record_balance(name, check.balance_usd)
            checks[name] = check
        return checks

    def free_checks(self) -> dict[str, FreeCheck | None]:
        return self._sync(self.afree_checks, "afree_checks")

    # -- lifecycle ------------------------------------------------------------------------

    def _sync(self, make: Callable[[], Awaitable[_T]], twin: str) -> _T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ImageRouterError(
                f"this sync method was called inside a running event loop; "
                f"use `await router.{twin}(...)` instead"
            )
        scopes = current_scopes()  # the caller's budget scopes (budget.py) follow it over

        async def scoped() -> _T:
            with budget_scopes(*scopes):
                return await make()

        return self._portal.call(scoped)

    async def aclose(self) -> None:
        """Close the HTTP clients (this loop's at once), stop the portal, close the ledger."""
        await self._loops.aclose_current()
        if asyncio.get_running_loop() is not self._portal.loop:
            # Joining the portal's thread takes a moment: not on this loop.
            await asyncio.to_thread(self._portal.close)
        self._loops.close_all()
        if self._owns_health:  # a shared health store pushes what it still holds
            await asyncio.to_thread(self.health.close)
        if self.ledger is not None:
            self.ledger.close()

    def _make_health(self, clock: Clock) -> HealthTracker:
        # shared.url: memory (this process), sqlite (one machine) or redis (a fleet).
        from .stores.shared_open import health_clock, open_health_store

        shared = self.config.shared
        return HealthTracker(
            HealthPolicy.from_mapping(self.config.health.model_dump()),
            open_health_store(shared.url, prefix=shared.prefix),
            clock=health_clock(shared.url, clock),
            config_fingerprint=self.config.fingerprint(),
        )

    def close(self) -> None:
        """Stop the portal (closing its client), close every other loop's client on its own
        loop, and close the ledger. Safe to call more than once."""
        self._portal.close()
        self._loops.close_all()
        if self._owns_health:
            self.health.close()
        if self.ledger is not None:
            self.ledger.close()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Router providers={sorted(self.catalog.entries)} config={self.config.source!r}>"


async def _ledger_barrier(request: httpx.Request) -> None:
    pending = current_pending()
    if pending is not None and not pending.durable():
        await pending.make_durable_async()  # on the ledger's writer thread (stores/aio.py)


def _load(item: ImageInput) -> LoadedImage | str:
    if item.kind == "url":
        assert item.url is not None
        return item.url
    return load_input(item, max_bytes=MAX_INPUT_BYTES)


def _routable(entry: Any) -> bool:
    """Enabled, and not a provider that stays off until its key is set (and has none)."""
    if not entry.settings.enabled:
        return False
    if not entry.provider.needs_key_to_route:
        return True
    try:
        entry.settings.resolve_api_key(entry.provider)
    except MissingApiKeyError:
        return False
    return True

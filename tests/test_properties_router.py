"""A Hypothesis state machine over the Router and its health state, with scripted providers.

Three in-process providers register through the plugin hook, as a third party would:
`alpha` replays a create by its idempotency key (like RunAPI), `beta` can be looked up by our
task id (like Runflow) and runs all images in one job, `gamma` can do neither. Each create
draws the next outcome from its provider's script: ok, refused, 429, 402, 401, unknown (the
job was or was not created), failed, stuck. Rules change the scripts, break the lookup, move
the fake clock and run batches of 1-4 concurrent requests; the config (max_attempts, the
unknown and deadline policies, the breaker threshold, a budget) is drawn per run.

After every batch: no request made more attempts than `routing.max_attempts`; none made the
providers create more paid images than it asked for unless the ledger records the opt-in;
the ledger's spend is at most the budget and at least what the providers billed; no
reservation is left open; every image a provider produced for a served request is on disk
with the ledger's sha256; and a request fails only with an `ImageRouterError` (when every
script is failover-safe and one backend is healthy and always succeeds, it is served). After
every step, `HealthTracker.order` is never empty.

Everything runs on a fake clock, with result downloads served by an `httpx.MockTransport`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from PIL import Image

from imagerouter import Offer, PriceTable, Provider, ProviderClient, ProviderSettings, Router
from imagerouter.clock import FakeClock
from imagerouter.config import load_config
from imagerouter.errors import (
    AuthenticationError,
    ConnectionFailedError,
    ImageRouterError,
    InsufficientCreditsError,
    ProviderUnavailableError,
    RateLimitedError,
    SubmissionUnknownError,
)
from imagerouter.health import BackendState
from imagerouter.hookspecs import hookimpl
from imagerouter.plugins import LOAD_PLUGINS_ENV, Plugins
from imagerouter.provider import LoadedImage, Submission, TaskSpec, TaskState, TaskStatus
from imagerouter.request import ImageRequest
from imagerouter.result import GenerationResult

from .test_fault_matrix import IMAGE_NUMBERS_COLLIDE, REFUSED_REPLAY_FAILS_OVER

NAMES = ("alpha", "beta", "gamma")
PRICES = {"alpha": "0.01", "beta": "0.02", "gamma": "0.03"}
OUTCOMES = (
    "ok",
    "refused",
    "429",
    "402",
    "401",
    "unknown_created",
    "unknown_lost",
    "failed",
    "stuck",
)
# Outcomes after which the router may always move on: nothing was created, or it failed.
FAILOVER_SAFE = frozenset({"ok", "refused", "429", "402", "401", "failed"})
BASE = "http://scripted.invalid"
# A provider's script: the outcomes of its next creates, repeated ("ok" drawn more often).
scripts = st.lists(st.sampled_from(("ok", "ok", "ok", *OUTCOMES)), min_size=1, max_size=4)


@dataclass
class Job:
    id: str
    provider: str
    task_id: str
    request_id: str
    count: int
    fate: str  # succeed | fail | stuck
    cost: Decimal

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(f"{BASE}/{self.provider}/{self.id}/{i}" for i in range(self.count))


@dataclass
class World:
    """What the scripted providers really did: their jobs and what they billed."""

    scripts: dict[str, list[str]] = field(default_factory=lambda: {n: ["ok"] for n in NAMES})
    cursor: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    find_broken: set[str] = field(default_factory=set)
    jobs: dict[str, Job] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)  # idempotency key -> job id
    billed: Decimal = Decimal(0)
    served: dict[str, str] = field(default_factory=dict)  # URL -> sha256 of the bytes

    def draw(self, provider: str) -> str:
        script = self.scripts[provider]
        outcome = script[self.cursor[provider] % len(script)]
        self.cursor[provider] += 1
        return outcome

    def create(self, provider: str, task: TaskSpec, fate: str, price: Decimal) -> Job:
        job = Job(
            id=uuid.uuid4().hex,
            provider=provider,
            task_id=task.task_id,
            request_id=task.metadata.get("imagerouter_request", ""),
            count=task.num_images,
            fate=fate,
            cost=price * task.num_images,
        )
        self.jobs[job.id] = job
        self.by_key[task.idempotency_key] = job.id
        if fate == "succeed":
            self.billed += job.cost  # jobs finish at once here, and billing follows time
        return job

    def png(self, request: httpx.Request) -> httpx.Response:
        """The download endpoint of every scripted provider."""
        url = str(request.url)
        digest = hashlib.sha256(url.encode()).digest()
        out = io.BytesIO()
        Image.new("RGB", (4, 4), tuple(digest[:3])).save(out, "PNG")
        self.served[url] = hashlib.sha256(out.getvalue()).hexdigest()
        return httpx.Response(200, content=out.getvalue(), headers={"content-type": "image/png"})


class ScriptedProvider(Provider):
    title = "Scripted"
    key_env_var = "SCRIPTED_API_KEY"
    base_url_env_var = "SCRIPTED_BASE_URL"
    default_base_url = BASE
    batch = False  # True: one job makes every image of the request

    def __init__(self, world: World) -> None:
        self.world = world

    def price_table(self) -> PriceTable:
        return PriceTable.from_mapping(
            {"provider": self.name, "prices": {"*": {"*": PRICES[self.name]}}, "source": "test"}
        )

    def offers(
        self, request: ImageRequest, *, prices: PriceTable, capabilities: Mapping[str, Any]
    ) -> list[Offer]:
        price = prices.lookup(request.model, request.operation)
        assert price is not None
        batches = (request.n,) if self.batch else (1,) * request.n
        return [Offer.priced(self.name, request, params={}, batches=batches, per_image_usd=price)]

    def client(self, settings: ProviderSettings, http: httpx.AsyncClient) -> ProviderClient:
        return ScriptedClient(self, Decimal(PRICES[self.name]))


class Alpha(ScriptedProvider):
    name = "alpha"
    idempotent_creates = True


class Beta(ScriptedProvider):
    name = "beta"
    can_find_by_task_id = True
    batch = True


class Gamma(ScriptedProvider):
    name = "gamma"


class ScriptedClient(ProviderClient):
    def __init__(self, provider: ScriptedProvider, price: Decimal) -> None:
        self.provider = provider
        self.world = provider.world
        self.price = price

    async def upload(self, image: LoadedImage) -> str:
        raise NotImplementedError  # generation only

    def _existing(self, task: TaskSpec) -> Job | None:
        job_id = self.world.by_key.get(task.idempotency_key)
        return self.world.jobs[job_id] if job_id and self.provider.idempotent_creates else None

    async def submit(self, offer: Offer, task: TaskSpec) -> Submission:
        name = self.provider.name
        known = self._existing(task)
        if known is not None and REFUSED_REPLAY_FAILS_OVER:
            # While that bug is open, a replay is answered from the idempotency record before
            # anything can refuse it (see test_fault_matrix); afterwards, any outcome may.
            return self._submission(known, replayed=True)
        outcome = self.world.draw(name)
        refusals: dict[str, Callable[[], ImageRouterError]] = {
            "refused": lambda: ConnectionFailedError("scripted: refused", provider=name),
            "429": lambda: RateLimitedError("scripted: 429", provider=name, retry_after=3.0),
            "402": lambda: InsufficientCreditsError("scripted: 402", provider=name),
            "401": lambda: AuthenticationError("scripted: 401", provider=name),
            "unknown_lost": lambda: SubmissionUnknownError(
                "scripted: no answer", provider=name, client_ref=task.task_id
            ),
        }
        if outcome in refusals:
            raise refusals[outcome]()
        job = known or self.world.create(
            name, task, {"failed": "fail", "stuck": "stuck"}.get(outcome, "succeed"), self.price
        )
        if outcome == "unknown_created":
            raise SubmissionUnknownError(
                "scripted: created, no answer", provider=name, client_ref=task.task_id
            )
        return self._submission(job, replayed=known is not None)

    def _submission(self, job: Job, *, replayed: bool) -> Submission:
        return Submission(
            provider=self.provider.name,
            task_id=job.id,
            poll_ref=job.id,
            state=TaskState.QUEUED,
            replayed=replayed,
        )

    async def get(self, poll_ref: str) -> TaskStatus:
        job = self.world.jobs[poll_ref]
        if job.fate == "fail":
            return TaskStatus(TaskState.FAILED, error="scripted failure")
        if job.fate == "stuck":
            return TaskStatus(TaskState.RUNNING)
        return TaskStatus(TaskState.SUCCEEDED, image_urls=job.urls, billed_usd=job.cost)

    async def find(self, task: TaskSpec) -> Submission | None:
        name = self.provider.name
        if not self.provider.can_find_by_task_id:
            raise NotImplementedError
        if name in self.world.find_broken:
            raise ProviderUnavailableError("scripted: lookup failed", provider=name)
        for job in self.world.jobs.values():
            if job.task_id == task.task_id:
                return self._submission(job, replayed=False)
        return None


class ScriptedPlugin:
    def __init__(self, world: World) -> None:
        self.world = world

    @hookimpl
    def register_providers(self, register: Callable[[Provider], None]) -> None:
        for cls in (Alpha, Beta, Gamma):
            register(cls(self.world))


def scripted_plugins(world: World) -> Plugins:
    """Only the scripted providers: no entry points (IMAGEROUTER_LOAD_PLUGINS="")."""
    with patch.dict(os.environ, {LOAD_PLUGINS_ENV: ""}):
        plugins = Plugins.load()
    plugins.register(ScriptedPlugin(world), name="scripted")
    return plugins


KEYS = [(name, "gpt-image-2", "generate") for name in NAMES]


def scratch_dir() -> Path:
    """A temp dir, in RAM where the system has one: the ledger fsyncs every write (its
    durability is tested in test_ledger and test_crash_resume), and runs make thousands."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="ir-props-", dir=base))


class RouterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.clock = FakeClock()
        self.loop = asyncio.new_event_loop()
        self.root = scratch_dir()
        self.router: Router | None = None
        self.requests = 0
        self.budget: Decimal | None = None

    @initialize(
        max_attempts=st.sampled_from([3, 3, 1, 2, 4]),
        on_unknown=st.sampled_from(["reconcile", "fail", "failover"]),
        on_deadline=st.sampled_from(["fail", "hedge"]),
        threshold=st.integers(1, 3),
        budget=st.sampled_from([None, None, "0.10", "0.30", "1.00"]),
    )
    def build(
        self,
        max_attempts: int,
        on_unknown: str,
        on_deadline: str,
        threshold: int,
        budget: str | None,
    ) -> None:
        self.budget = Decimal(budget) if budget else None
        data: dict[str, Any] = {
            "providers": {
                name: {"api_key": f"scripted-{name}-key", "poll_interval": 1, "poll_deadline": 5}
                for name in NAMES
            },
            "routing": {
                "max_attempts": max_attempts,
                "on_unknown_submission": on_unknown,
                "on_deadline": on_deadline,
            },
            "health": {
                "failure_threshold": threshold,
                "base_ejection_s": 10,
                "max_ejection_s": 60,
                "rate_limit_cooldown_s": 5,
                "out_of_credit_s": 30,
            },
            "budget": {"total_usd": budget} if budget else {},
            "ledger": {"path": str(self.root / "ledger.db")},
            "output": {"dir": str(self.root / "out")},
        }
        plugins = scripted_plugins(self.world)
        config = load_config(data, known_providers=plugins.providers())
        self.router = Router(
            config,
            plugins=plugins,
            clock=self.clock,
            sleep=self.clock.sleep,
            transport=httpx.MockTransport(self.world.png),
        )

    @rule(scripts=st.fixed_dictionaries({name: scripts for name in NAMES}))
    def set_scripts(self, scripts: dict[str, list[str]]) -> None:
        for name, script in scripts.items():
            self.world.scripts[name] = script
            self.world.cursor[name] = 0

    @rule(broken=st.booleans())
    def lookup(self, broken: bool) -> None:
        (self.world.find_broken.add if broken else self.world.find_broken.discard)("beta")

    @rule(seconds=st.floats(0, 120))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(
        sizes=st.lists(st.integers(1, 2), min_size=1, max_size=4),
        scripts=st.none() | st.fixed_dictionaries({name: scripts for name in NAMES}),
    )
    def run_batch(self, sizes: list[int], scripts: dict[str, list[str]] | None) -> None:
        """A batch of concurrent requests, with new scripts or the ones left running."""
        router = self.router
        assert router is not None
        if scripts is not None:
            self.set_scripts(scripts)
        promised = self._success_promised(router)
        prompts = []
        for n in sizes:
            self.requests += 1
            prompts.append((f"request {self.requests}", n))
        outcomes = self.loop.run_until_complete(self._batch(router, prompts))
        self._check(router, outcomes, promised)

    async def _batch(
        self, router: Router, prompts: list[tuple[str, int]]
    ) -> list[tuple[str, int, GenerationResult | ImageRouterError]]:
        async def one(prompt: str, n: int) -> tuple[str, int, GenerationResult | ImageRouterError]:
            try:
                return prompt, n, await router.agenerate(prompt, n=n)
            except ImageRouterError as exc:  # anything else fails the run
                return prompt, n, exc

        return list(await asyncio.gather(*(one(p, n) for p, n in prompts)))

    def _success_promised(self, router: Router) -> bool:
        """Every script is failover-safe, a backend that always succeeds is healthy, there
        are attempts enough to reach it and no budget can refuse: every request is served."""
        scripts = self.world.scripts
        healthy = any(
            set(scripts[key[0]]) == {"ok"} and router.health.state(key) is BackendState.HEALTHY
            for key in KEYS
        )
        return (
            healthy
            and self.budget is None
            and router.config.routing.max_attempts >= len(NAMES)
            and all(set(script) <= FAILOVER_SAFE for script in scripts.values())
        )

    # -- the invariants --------------------------------------------------------------------

    @invariant()
    def never_every_backend_out(self) -> None:
        if self.router is not None:
            assert self.router.health.order(KEYS)

    def _check(
        self,
        router: Router,
        outcomes: list[tuple[str, int, GenerationResult | ImageRouterError]],
        promised: bool,
    ) -> None:
        db = sqlite3.connect(f"file:{self.root / 'ledger.db'}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            for prompt, n, outcome in outcomes:
                row = db.execute("SELECT * FROM requests WHERE prompt = ?", (prompt,)).fetchone()
                assert row is not None, prompt
                served = isinstance(outcome, GenerationResult)
                assert row["status"] == ("served" if served else "failed")
                if promised:
                    assert served, f"{prompt} failed although a healthy backend was left: {outcome}"
                self._check_request(db, row["id"], n, served)
            self._check_money(db)
        finally:
            db.close()

    def _check_request(self, db: sqlite3.Connection, rid: str, n: int, served: bool) -> None:
        router = self.router
        assert router is not None
        attempts = db.execute("SELECT * FROM attempts WHERE request_id = ?", (rid,)).fetchall()
        assert len(attempts) <= router.config.routing.max_attempts
        opted_in = any(a["accepts_double_charge"] for a in attempts)
        jobs = [job for job in self.world.jobs.values() if job.request_id == rid]
        paid = sum(job.count for job in jobs if job.fate != "fail")
        assert paid <= n or opted_in, f"{rid}: {paid} paid images for n={n}"
        if not served:
            return
        images = db.execute("SELECT * FROM images WHERE request_id = ?", (rid,)).fetchall()
        saved = {row["source_url"]: row for row in images}
        paths = [row["path"] for row in images]
        tasks = {
            t["provider_task_id"]: t
            for t in db.execute("SELECT * FROM tasks WHERE request_id = ?", (rid,))
        }
        for job in jobs:
            if job.fate != "succeed":
                continue
            task = tasks.get(job.id)
            if task is None or task["provider_task_id"] is None:
                # Made after a lost answer and never found: only with the opt-in.
                assert opted_in, f"{rid}: the image of job {job.id} is lost"
                continue
            for url in job.urls:
                image = saved.get(url)
                assert image is not None, f"{rid}: {url} was never saved"
                disk = Path(image["path"]).read_bytes()
                same = hashlib.sha256(disk).hexdigest() == image["sha256"]
                collided = IMAGE_NUMBERS_COLLIDE and paths.count(image["path"]) > 1
                assert same or collided, f"{rid}: {image['path']} is not the image saved"
                assert image["sha256"] == self.world.served[url]

    def _check_money(self, db: sqlite3.Connection) -> None:
        """What the providers billed <= what the ledger says was (or may have been) spent
        <= the budget, and no reservation is left open."""
        recorded = sum(
            (Decimal(r["cost_usd"] or 0) for r in db.execute("SELECT cost_usd FROM requests")),
            start=Decimal(0),
        )
        assert self.world.billed <= recorded, f"billed {self.world.billed} > ledger {recorded}"
        if self.budget is None:
            return  # without a limit the router keeps no reservations
        reserved = Decimal(0)
        for r in db.execute("SELECT * FROM reservations"):
            assert r["state"] != "open", f"reservation {r['id']} left open"
            if r["state"] == "settled":
                reserved += Decimal(r["settled_usd"])
        assert self.world.billed <= reserved <= self.budget

    def teardown(self) -> None:
        if self.router is not None:
            self.loop.run_until_complete(self.router.aclose())
        self.loop.close()
        shutil.rmtree(self.root, ignore_errors=True)


def test_router_and_health_state_machine() -> None:
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        RouterMachine,
        # IMAGEROUTER_FUZZ_EXAMPLES=2000 for a longer campaign than CI's.
        settings=settings(
            max_examples=int(os.environ.get("IMAGEROUTER_FUZZ_EXAMPLES", "60")),
            stateful_step_count=10,
            deadline=None,
        ),
    )

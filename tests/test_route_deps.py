"""Routing, accounting, reconciliation and resume take one frozen RouteDeps, never the Router
(issue 13; layout.md). These tests route a paid request with deps built by hand and no
Router at all, drive the recovery rate limit with fakes, check the Router builds its deps
once (valid across event loops), and check the modules never import the Router."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagerouter.budget import Budget, BudgetLimits
from imagerouter.config import Config, load_config
from imagerouter.emulated import Emulators
from imagerouter.health import HealthTracker
from imagerouter.ledger import Ledger
from imagerouter.offers import Offer
from imagerouter.plugins import Plugins
from imagerouter.polling import FixedSchedule, PollSchedule
from imagerouter.provider import ProviderClient
from imagerouter.quoting import Catalog, quote
from imagerouter.reconcile import RECHECK_S, RecoveryState, due
from imagerouter.request import ImageRequest
from imagerouter.resume import resume_uncollected, sweep
from imagerouter.route_deps import RouteDeps, as_deps
from imagerouter.routing import route_request
from imagerouter.stores import ledger_url, open_ledger
from imagerouter.urls import HostPolicy

from .conftest import MakeRouter, base_config, fast_sleep

PACKAGE = Path(__file__).resolve().parents[1] / "imagerouter"
TAKE_DEPS = ("routing", "accounting", "reconcile", "resume", "route_deps")
# What sits above routing (layout.md: plain data <- pricing <- routing <- router <- cli).
HIGHER = {"router", "cache", "batch", "gateway", "cli", "mcp_server"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An `Emit` that keeps every hook call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, hook: str, **kwargs: Any) -> None:
        self.calls.append((hook, kwargs["event"]))


def _never(*args: Any) -> Any:
    raise AssertionError(f"not expected here: {args}")


def _fake_deps(config: Config, clock: FakeClock, **changes: Any) -> RouteDeps:
    """Deps made of fakes only: anything a test does not give fails loudly when called."""
    deps = RouteDeps(
        config=config,
        catalog=Catalog(entries={}, order=()),
        ledger=None,
        budget=None,
        health=HealthTracker(clock=clock),
        clock=clock,
        sleep=fast_sleep,
        quote_request=_never,
        client_for=_never,
        http=_never,
        schedule_for=_never,
        download_policy=_never,
        emit=Recorder(),
        recovery=RecoveryState(),
        waiters={},
    )
    return dataclasses.replace(deps, **changes)


@pytest.fixture
def config(emulators: Emulators, plugins: Plugins, tmp_path: Path) -> Config:
    data = base_config(tmp_path)
    data["budget"] = {"total_usd": 5}
    return emulators.configure(load_config(data, known_providers=plugins.providers()))


@pytest.fixture
async def ledger(config: Config) -> AsyncIterator[Ledger]:
    opened = open_ledger(ledger_url(config.ledger))
    yield opened
    opened.close()


async def test_a_request_is_routed_with_deps_and_no_router(
    config: Config, plugins: Plugins, ledger: Ledger, tmp_path: Path
) -> None:
    catalog = Catalog.build(plugins.providers(), config)
    health = HealthTracker()
    emitted = Recorder()
    built: dict[str, ProviderClient] = {}
    budget = Budget(BudgetLimits(total_usd=Decimal(5)), ledger)
    async with httpx.AsyncClient(follow_redirects=False) as http:

        def client_for(name: str) -> ProviderClient:
            if name not in built:
                entry = catalog.entries[name]
                built[name] = entry.provider.client(entry.settings, http)
            return built[name]

        def quote_request(request: ImageRequest) -> list[Offer]:
            return quote(catalog, request, config)

        def schedule_for(offer: Offer) -> PollSchedule:
            return FixedSchedule(interval=0.01)

        def download_policy(name: str) -> HostPolicy:
            entry = catalog.entries[name]
            return HostPolicy.build(
                entry.provider.download_hosts,
                entry.settings.resolve_base_url(entry.provider),
                config.downloads.allowed_hosts,
            )

        deps = RouteDeps(
            config=config,
            catalog=catalog,
            ledger=ledger,
            budget=budget,
            health=health,
            clock=FakeClock(),
            sleep=fast_sleep,
            quote_request=quote_request,
            client_for=client_for,
            http=lambda: http,
            schedule_for=schedule_for,
            download_policy=download_policy,
            emit=emitted,
            recovery=RecoveryState(),
            waiters={},
        )
        request = ImageRequest.build(prompt="a lighthouse", providers="runapi")
        result = await route_request(deps, request, [], None, tmp_path / "out")

    assert result.provider == "runapi"
    assert len(result.images) == 1 and result.images[0].path.is_file()
    assert result.cost_usd > 0
    row = ledger.request_detail(result.request_id)["request"]
    assert row["status"] == "served"
    assert Decimal(row["cost_usd"]) == result.cost_usd
    # The budget reserved and settled through the deps' budget, on the same ledger.
    assert budget.status()["total_usd"]["committed"] == f"{result.cost_usd:f}"
    assert [hook for hook, _ in emitted.calls] == ["on_attempt", "on_result"]
    assert emitted.calls[1][1].ok is True
    offer_key = (result.provider, result.model, result.operation)
    assert health.stats(offer_key).successes == 1


def test_the_recovery_rate_limit_runs_on_fakes(config: Config) -> None:
    clock = FakeClock()
    deps = _fake_deps(config, clock)
    assert due(deps, "runapi") is True
    clock.now += RECHECK_S - 1
    assert due(deps, "runapi") is False
    assert due(deps, "runflow") is True  # per backend
    clock.now += 1
    assert due(deps, "runapi") is True


async def test_resume_takes_deps_or_a_router(make_router: MakeRouter) -> None:
    router = make_router()
    assert await resume_uncollected(router.deps) == []
    assert await resume_uncollected(router) == []  # the documented entry point still works


async def test_sweep_asks_for_the_deps_every_pass(make_router: MakeRouter) -> None:
    router = make_router()
    asked: list[RouteDeps] = []

    def deps_of() -> RouteDeps:
        deps: RouteDeps = router.deps
        asked.append(deps)
        return deps

    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    await sweep(deps_of, interval=7.0, sleep=no_wait, passes=2)
    assert waits == [7.0]
    assert len(asked) >= 2 and all(d is router.deps for d in asked)


def test_the_router_builds_its_deps_once(make_router: MakeRouter) -> None:
    router = make_router()
    deps = router.deps
    assert router.deps is deps
    assert as_deps(router) is deps and as_deps(deps) is deps
    # The Router's own stores and bookkeeping, shared, not copies.
    assert deps.ledger is router.ledger and deps.health is router.health
    assert deps.budget is router.budget and deps.recovery is router.recovery
    assert deps.waiters is router.waiters and deps.catalog is router.catalog
    with pytest.raises(dataclasses.FrozenInstanceError):
        deps.ledger = None  # type: ignore[misc]
    assert repr(deps) == "<RouteDeps providers=['openai', 'runapi', 'runflow'] ledger=on>"

    async def clients() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        return deps.http(), deps.http()

    # One deps object, valid on any loop: each loop gets its own client through it.
    first, again = asyncio.run(clients())
    second, _ = asyncio.run(clients())
    assert first is again
    assert first is not second
    assert router.deps is deps


def test_swapping_the_routers_sleep_rebuilds_its_deps(make_router: MakeRouter) -> None:
    router = make_router()
    before = router.deps

    async def other_sleep(seconds: float) -> None:
        return None

    router.sleep = other_sleep
    assert router.sleep is other_sleep
    assert router.deps is not before
    assert router.deps.sleep is other_sleep
    assert router.deps.ledger is before.ledger  # still the same stores


def _imported_modules(source: str) -> set[str]:
    """Every imagerouter module a module's `source` imports anywhere: at the top, inside
    functions, or under TYPE_CHECKING ("" is the package root)."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module or ""
            elif node.level == 0 and (node.module or "").startswith("imagerouter"):
                base = (node.module or "").removeprefix("imagerouter").lstrip(".")
            else:
                continue
            if not base:  # `from . import x`: x is the module
                found.update(alias.name for alias in node.names)
                found.add("")  # and the package root, which imports the Router
            else:
                found.add(base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("imagerouter"):
                    found.add(alias.name.removeprefix("imagerouter").lstrip("."))
    return found


@pytest.mark.parametrize("module", TAKE_DEPS)
def test_routing_modules_never_import_the_router(module: str) -> None:
    imported = _imported_modules((PACKAGE / f"{module}.py").read_text())
    assert "" not in imported, f"{module} imports the package root (which imports Router)"
    assert not {name.split(".")[0] for name in imported} & HIGHER, (module, imported)


@pytest.mark.parametrize(
    "line",
    [
        "    from .router import Router",
        "    from imagerouter.router import Router",
        "    from . import router",
        "    import imagerouter.cache",
        "    from .batch.run import run_requests",
    ],
)
def test_the_import_check_catches_a_hidden_router_import(line: str) -> None:
    source = f"from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n{line}\n"
    imported = _imported_modules(source)
    assert "" in imported or {name.split(".")[0] for name in imported} & HIGHER

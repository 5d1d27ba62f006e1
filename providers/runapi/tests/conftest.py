"""Fixtures for the RunAPI plugin's tests: the emulator on a real loopback socket (with a
clock the test can move), and RunAPIClient instances pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from imagerouter_runapi import RunAPIClient, RunAPIProvider
from imagerouter_runapi.emulator import build_emulator
from pydantic import SecretStr

from imagerouter.emulation import (
    EmulatorApp,
    EmulatorOptions,
    EmulatorServer,
    FaultPlan,
    LatencyModel,
)
from imagerouter.offers import Offer
from imagerouter.provider import ProviderSettings, TaskSpec
from imagerouter.provider_kit.testing import FakeClock, SwitchApp, serve_switch, shared_ssl_context

KEY = "sk-runapi-test-5f1d9c0b7e"


# The emulator's clock; tests move it instead of sleeping.
ManualClock = FakeClock


@dataclass
class Emu:
    app: EmulatorApp
    server: EmulatorServer
    clock: ManualClock | None  # None: the emulator runs on the real clock

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def faults(self) -> FaultPlan:
        return self.app.options.faults

    def finish_jobs(self) -> None:
        """Move the clock past every job's latency."""
        assert self.clock is not None
        self.clock.advance(60.0)


@pytest.fixture
def provider() -> RunAPIProvider:
    return RunAPIProvider()


@pytest.fixture(scope="session")
def switch() -> Iterator[tuple[SwitchApp, EmulatorServer]]:
    """One loopback server for the session, serving whichever emulator a test built."""
    with serve_switch() as served:
        yield served


@pytest.fixture
def emulator(
    provider: RunAPIProvider, switch: tuple[SwitchApp, EmulatorServer]
) -> Emu:
    """A fresh emulator (own jobs, counters, faults, clock) behind the session's server."""
    clock = ManualClock()
    options = EmulatorOptions(
        api_key=KEY, latency=LatencyModel("fixed", 0.01), hang_seconds=1.0, seed=7
    )
    app = build_emulator(provider, options, clock=clock)
    switch_app, server = switch
    switch_app.target = app.app
    return Emu(app, server, clock)


# Building an SSL context costs ~0.1 s; every client in these tests shares one.
SSL_CONTEXT = shared_ssl_context()


@pytest.fixture
def realtime_emulator(
    provider: RunAPIProvider, switch: tuple[SwitchApp, EmulatorServer]
) -> Emu:
    """Like `emulator`, but jobs finish on the real clock (after 10 ms): for clients that
    poll by themselves, such as RunAPI's SDKs."""
    options = EmulatorOptions(api_key=KEY, latency=LatencyModel("fixed", 0.01), seed=7)
    app = build_emulator(provider, options)
    switch_app, server = switch
    switch_app.target = app.app
    return Emu(app, server, None)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
        yield client


@pytest.fixture
def make_client(
    provider: RunAPIProvider, emulator: Emu, http: httpx.AsyncClient
) -> Callable[..., RunAPIClient]:
    def make(key: str = KEY, timeout: float = 5.0, base_url: str | None = None) -> RunAPIClient:
        settings = ProviderSettings(
            api_key=SecretStr(key), base_url=base_url or emulator.url, timeout=timeout
        )
        return provider.client(settings, http)

    return make


@pytest.fixture
def client(make_client: Callable[..., RunAPIClient]) -> RunAPIClient:
    return make_client()


@pytest.fixture
def api_key() -> str:
    return KEY


@pytest.fixture
def spec() -> Callable[..., TaskSpec]:
    """A factory of TaskSpecs (a valid 1:1 1k gpt-image-2 generate by default)."""
    return task_spec


@pytest.fixture
def offer_for() -> Callable[[TaskSpec], Offer]:
    """The minimal eligible Offer a TaskSpec's params came from."""

    def make(task: TaskSpec) -> Offer:
        return Offer(
            provider="runapi",
            model=task.model,
            operation=task.operation,
            eligible=True,
            params=dict(task.params),
            batches=(1,),
        )

    return make


def task_spec(
    *,
    task_id: str = "task-1",
    key: str = "idem-1",
    prompt: str = "a lighthouse at dusk",
    model: Any = "gpt-image-2",
    operation: Any = "generate",
    params: dict[str, Any] | None = None,
    input_urls: tuple[str, ...] = (),
    callback_url: str | None = None,
) -> TaskSpec:
    if params is None:
        params = (
            {"model": "gpt-image-2", "aspect_ratio": "1:1", "output_resolution": "1k"}
            if model == "gpt-image-2"
            else {"model": "gpt-image-1.5", "aspect_ratio": "1:1", "quality": "high"}
        )
    return TaskSpec(
        task_id=task_id,
        idempotency_key=key,
        prompt=prompt,
        model=model,
        operation=operation,
        num_images=1,
        params=params,
        input_urls=input_urls,
        callback_url=callback_url,
    )

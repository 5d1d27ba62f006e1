"""Shared fixtures for the Runflow plugin's tests."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from imagerouter_runflow import RunflowProvider
from imagerouter_runflow.client import RunflowClient
from imagerouter_runflow.emulator import emulator_state
from imagerouter_runflow.emulator_state import RunflowEmulatorOptions, RunflowEmulatorState
from pydantic import SecretStr

from imagerouter.emulation import EmulatorApp, EmulatorServer, LatencyModel
from imagerouter.offers import Offer
from imagerouter.provider import ProviderSettings, TaskSpec
from imagerouter.provider_kit.testing import (
    FakeClock,
    SwitchApp,
    offer_maker,
    serve_switch,
    shared_ssl_context,
    task_maker,
)

SECRET_KEY = "rf_live_TOPSECRETkey0123456789"


@pytest.fixture
def provider() -> RunflowProvider:
    return RunflowProvider()


@pytest.fixture
def make_offer(provider: RunflowProvider) -> Callable[..., Offer]:
    return offer_maker(provider)


@pytest.fixture
def make_task() -> Callable[..., TaskSpec]:
    return task_maker()


@pytest.fixture
def secret_key() -> str:
    """A key whose string must never show up in an error, repr or log line."""
    return SECRET_KEY


@dataclass
class Rig:
    """One Runflow emulator served over loopback, and a client pointed at it."""

    emulator: EmulatorApp
    state: RunflowEmulatorState
    server: EmulatorServer
    http: httpx.AsyncClient
    client: RunflowClient
    clock: FakeClock
    key: str
    sent: list[httpx.Request]

    def client_with(self, **settings: Any) -> RunflowClient:
        config = ProviderSettings(
            api_key=SecretStr(settings.pop("api_key", self.key)),
            base_url=settings.pop("base_url", self.server.url),
            **settings,
        )
        client = RunflowProvider().client(config, self.http)
        assert isinstance(client, RunflowClient)
        return client

    def finish_runs(self) -> None:
        """Move the clock past every run's latency."""
        self.clock.advance(1.0)
        self.state.settle()


@pytest.fixture(scope="session")
def shared_server() -> Iterator[tuple[EmulatorServer, SwitchApp]]:
    with serve_switch() as (switch, server):
        yield server, switch


@pytest.fixture(scope="session")
def tls_context() -> ssl.SSLContext:
    return shared_ssl_context()


@pytest.fixture
async def make_rig(
    secret_key: str,
    shared_server: tuple[EmulatorServer, SwitchApp],
    tls_context: ssl.SSLContext,
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """`await make_rig(**emulator_options)`: an emulator, served, and a client for it."""
    server, switch = shared_server
    async with contextlib.AsyncExitStack() as stack:

        async def build(**options: Any) -> Rig:
            clock = FakeClock()
            settings = options.pop("settings", {})
            opts = RunflowEmulatorOptions(
                api_key=secret_key,
                latency=LatencyModel("fixed", 0.01),
                clock=clock,
                **options,
            )
            emulator = RunflowProvider().emulator(opts)
            switch.target = emulator.app
            sent: list[httpx.Request] = []

            async def record(request: httpx.Request) -> None:
                sent.append(request)

            http = await stack.enter_async_context(
                httpx.AsyncClient(event_hooks={"request": [record]}, verify=tls_context)
            )
            rig = Rig(
                emulator=emulator,
                state=emulator_state(emulator),
                server=server,
                http=http,
                client=None,  # type: ignore[arg-type]
                clock=clock,
                key=secret_key,
                sent=sent,
            )
            rig.client = rig.client_with(**settings)
            return rig

        yield build


@pytest.fixture
async def rig(make_rig: Callable[..., Awaitable[Rig]]) -> Rig:
    return await make_rig()

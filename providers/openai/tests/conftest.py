"""Shared fixtures for the OpenAI plugin's tests: one emulator on a real loopback socket per
module (faults and counters reset between tests), and a client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from imagerouter_openai import OpenAIProvider
from imagerouter_openai.client import OpenAIClient
from pydantic import SecretStr

from imagerouter.emulation import EmulatorApp, EmulatorOptions, EmulatorServer, LatencyModel
from imagerouter.offers import Offer
from imagerouter.provider import ProviderSettings, TaskSpec
from imagerouter.provider_kit.testing import offer_maker, task_maker

SECRET_KEY = "sk-proj-TOPSECRETkey0123456789abcdef"


@dataclass
class Served:
    emulator: EmulatorApp
    server: EmulatorServer

    @property
    def url(self) -> str:
        return f"{self.server.url}/v1"


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    options = EmulatorOptions(
        api_key=SECRET_KEY, latency=LatencyModel("fixed", 0.0), seed=5, hang_seconds=1.0
    )
    app = OpenAIProvider().emulator(options)
    with EmulatorServer(app.app) as server:
        yield Served(app, server)


@pytest.fixture(autouse=True)
def _clean(served: Served) -> Iterator[None]:
    served.emulator.options.faults.clear()
    served.emulator.counters.reset()
    yield
    served.emulator.options.faults.clear()


@pytest.fixture
def provider() -> OpenAIProvider:
    return OpenAIProvider()


@pytest.fixture
def make_offer(provider: OpenAIProvider) -> Callable[..., Offer]:
    return offer_maker(provider)


@pytest.fixture
def make_task(tmp_path: Any) -> Callable[..., TaskSpec]:
    return task_maker(scratch_dir=str(tmp_path / "scratch"))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def make_client(
    served: Served, http: httpx.AsyncClient, provider: OpenAIProvider
) -> Callable[..., OpenAIClient]:
    def build(**settings: Any) -> OpenAIClient:
        config = ProviderSettings(
            api_key=SecretStr(settings.pop("api_key", SECRET_KEY)),
            base_url=settings.pop("base_url", served.url),
            **settings,
        )
        return provider.client(config, http)

    return build

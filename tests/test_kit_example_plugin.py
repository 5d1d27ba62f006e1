"""The example plugin in docs/plugins.md runs: its provider, its `HttpClient` and its emulator
on `imagerouter.emulation`, loaded through the hook, served on a loopback socket and driven
by a Router, using only the provider kit and the public API."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from imagerouter import Router
from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.emulation import EmulatorOptions, EmulatorServer, FaultPlan, LatencyModel
from imagerouter.errors import ProviderUnavailableError, RateLimitedError
from imagerouter.hookspecs import hookimpl
from imagerouter.plugins import Plugins
from imagerouter.provider import Provider
from imagerouter.provider_kit import TaskSpec, TaskState
from imagerouter.provider_kit.testing import FakeClock, make_settings

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def example_namespace() -> dict[str, Any]:
    """Every runnable Python block of the guide, in order, in one namespace (as the three
    modules of a package would see each other)."""
    text = GUIDE.read_text(encoding="utf-8")
    namespace: dict[str, Any] = {"__name__": "imagerouter_acme_example"}
    parts = text.split("```python\n")
    for before, chunk in itertools.pairwise(parts):
        if before.rstrip().splitlines()[-1].startswith("<!-- not run"):
            continue
        exec(chunk.split("```", 1)[0], namespace)
    return namespace


@pytest.fixture(scope="module")
def acme() -> Provider:
    provider = example_namespace()["AcmeProvider"]()
    assert isinstance(provider, Provider)
    return provider


@pytest.fixture
def plugins(acme: Provider) -> Iterator[Plugins]:
    class AcmePlugin:
        @hookimpl
        def register_providers(self, register: Callable[[Provider], None]) -> None:
            register(acme)

    loaded = Plugins.load(entry_points_too=False)
    loaded.register(AcmePlugin(), name="acme")
    yield loaded
    loaded.unregister(name="acme")


def test_a_router_generates_through_the_example_plugin(
    plugins: Plugins, tmp_path: Path
) -> None:
    data = {"output": {"dir": str(tmp_path / "out")}, "ledger": {"path": str(tmp_path / "l.db")},
            "providers": {"acme": {"poll_interval": 0.01, "timeout": 5}}}
    with Emulators.start(plugins, names=["acme"], latency="fixed:0.02", seed=3) as running:
        config = running.configure(load_config(data, known_providers=plugins.providers()))
        router = Router(config, plugins=plugins)
        try:
            result = router.generate("a red fox", providers=["acme"], n=2)
        finally:
            router.close()
        counters = running.apps["acme"].counters.snapshot()
    assert len(result.images) == 2
    assert all(Path(image.path).read_bytes().startswith(b"\x89PNG") for image in result.images)
    assert counters["created"] == 2 and counters["billed_usd"] == Decimal("0.10")


def test_the_kit_maps_the_example_emulators_faults(acme: Provider) -> None:
    clock = FakeClock()
    options = EmulatorOptions(api_key="acme-key-123", latency=LatencyModel("fixed", 1.0),
                              faults=FaultPlan.parse("create:seq=429,created_500"))
    emulator = acme.emulator(options)
    emulator.app.state.emulator.clock = clock

    async def run() -> None:
        with EmulatorServer(emulator.app) as server:
            async with httpx.AsyncClient() as http:
                client = acme.client(make_settings("acme-key-123", server.url), http)
                offer = acme.offers(
                    _request(), prices=acme.price_table(), capabilities=acme.capabilities()
                )[0]
                task = TaskSpec(task_id="t-1", idempotency_key="k-1", prompt="x",
                                model="gpt-image-2", operation="generate", num_images=1,
                                params={})
                with pytest.raises(RateLimitedError) as limited:
                    await client.submit(offer, task)
                assert limited.value.accepted == "no"
                with pytest.raises(ProviderUnavailableError) as lost:
                    await client.submit(offer, task)
                assert lost.value.accepted == "unknown"  # the job exists: never sent again
                submitted = await client.submit(offer, task)
                assert (await client.get(submitted.poll_ref)).state is TaskState.QUEUED
                clock.advance(5.0)
                done = await client.get(submitted.poll_ref)
                assert done.state is TaskState.SUCCEEDED and len(done.image_urls) == 1
                wrong = acme.client(make_settings("acme-wrong-key", server.url), http)
                with pytest.raises(Exception) as refused:
                    await wrong.get(submitted.poll_ref)
                assert "acme-wrong-key" not in str(refused.value)

    asyncio.run(run())


def _request() -> Any:
    from imagerouter.request import ImageRequest

    return ImageRequest.build(prompt="x", model="gpt-image-2")


def test_make_settings_keeps_the_key_secret() -> None:
    settings = make_settings("acme-key-123", "http://127.0.0.1:9")
    assert isinstance(settings.api_key, SecretStr) and "acme-key-123" not in repr(settings)

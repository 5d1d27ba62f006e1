"""The plugin seam: built-ins load through entry points, a third party registers through the
same hook, and a broken plugin is reported instead of taking the host down."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from imagerouter import Offer, PriceTable, Provider, ProviderClient, ProviderSettings, Router
from imagerouter.cli import cli
from imagerouter.config import load_config
from imagerouter.events import AttemptEvent, ResultEvent
from imagerouter.hookspecs import hookimpl
from imagerouter.plugins import Plugins
from imagerouter.request import ImageRequest


class PennyProvider(Provider):
    """A third-party provider that sells every image for a cent (offers only)."""

    name = "penny"
    title = "Penny Images"
    key_env_var = "PENNY_API_KEY"
    base_url_env_var = "PENNY_BASE_URL"
    default_base_url = "https://penny.invalid"

    def price_table(self) -> PriceTable:
        return PriceTable.from_mapping(
            {"provider": "penny", "prices": {"*": {"*": "0.01"}}, "source": "test"}
        )

    def offers(
        self, request: ImageRequest, *, prices: PriceTable, capabilities: Mapping[str, Any]
    ) -> list[Offer]:
        price = prices.lookup(request.model, request.operation)
        assert price is not None
        return [
            Offer.priced(
                "penny",
                request,
                params={"model": request.model},
                batches=(request.n,),
                per_image_usd=price,
            )
        ]

    def client(self, settings: ProviderSettings, http: httpx.AsyncClient) -> ProviderClient:
        raise NotImplementedError


class PennyPlugin:
    @hookimpl
    def register_providers(self, register: Callable[[Provider], None]) -> None:
        register(PennyProvider())


def test_builtin_providers_come_through_entry_points() -> None:
    plugins = Plugins.load()
    assert {"runapi", "runflow"} <= set(plugins.providers())
    names = {info.name: info for info in plugins.info()}
    assert names["runapi"].distribution == "imagerouter-runapi"
    assert "register_providers" in names["runflow"].hooks
    plugins.manager.check_pending()


def test_third_party_provider_registers_through_the_same_hook() -> None:
    plugins = Plugins.load()
    plugins.register(PennyPlugin(), name="penny-plugin")
    try:
        config = load_config({"providers": {"penny": {}}}, known_providers=plugins.providers())
        router = Router(config, plugins=plugins, ledger=False)
        offers = router.quote("x", n=3)
        assert offers[0].provider == "penny" and offers[0].total_usd == Decimal("0.03")
    finally:
        plugins.unregister(name="penny-plugin")
    assert "penny" not in plugins.providers()


def test_a_plugin_whose_hook_raises_is_reported() -> None:
    class Broken:
        @hookimpl
        def register_providers(self, register: Callable[[Provider], None]) -> None:
            raise RuntimeError("boom at register time")

    plugins = Plugins.load()
    plugins.register(Broken(), name="broken")
    providers = plugins.providers()
    assert {"runapi", "runflow"} <= set(providers)
    assert any(e.plugin == "broken" and "boom" in e.error for e in plugins.errors)


def test_event_hooks_see_attempts_and_a_failing_hook_is_harmless(make_router: Any) -> None:
    seen: list[object] = []

    class Watcher:
        @hookimpl
        def on_attempt(self, event: AttemptEvent) -> None:
            seen.append(event)

        @hookimpl
        def on_result(self, event: ResultEvent) -> None:
            seen.append(event)

    class Faulty:
        @hookimpl
        def on_attempt(self, event: AttemptEvent) -> None:
            raise ValueError("observer bug")

    router = make_router()
    router.plugins.register(Watcher(), name="watcher")
    router.plugins.register(Faulty(), name="faulty")
    try:
        result = router.generate("x")
    finally:
        router.plugins.unregister(name="watcher")
        router.plugins.unregister(name="faulty")
    attempts = [e for e in seen if isinstance(e, AttemptEvent)]
    results = [e for e in seen if isinstance(e, ResultEvent)]
    assert attempts[0].provider == result.provider and attempts[0].outcome == "served"
    assert results[0].ok and results[0].request_id == result.request_id


@pytest.fixture
def broken_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real installed-looking distribution whose entry point fails to import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "imagerouter_broken.py").write_text("raise ImportError('this plugin is broken')\n")
    info = site / "imagerouter_broken-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: imagerouter-broken\nVersion: 0.0.1\n"
    )
    (info / "entry_points.txt").write_text("[imagerouter]\nbroken = imagerouter_broken\n")
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("imagerouter_broken", None)
    return "broken"


def test_broken_entry_point_does_not_crash_the_cli(broken_distribution: str) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["providers", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert any(e["plugin"] == "broken" and "broken" in e["error"] for e in data["errors"])
    assert {p["name"] for p in data["providers"]} >= {"runapi", "runflow"}
    quoted = runner.invoke(cli, ["quote", "a cat", "--json"])
    assert quoted.exit_code == 0, quoted.output


def test_env_var_restricts_which_plugins_load(
    broken_distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEROUTER_LOAD_PLUGINS", "runflow")
    plugins = Plugins.load()
    assert set(plugins.providers()) == {"runflow"}
    assert plugins.errors == []
    monkeypatch.setenv("IMAGEROUTER_LOAD_PLUGINS", "")
    assert Plugins.load().providers() == {}


def test_the_plugin_guide_example_works() -> None:
    """The AcmeProvider in docs/plugins.md is real code: run it through the hook."""
    guide = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    block = next(b for b in guide.split("```python")[1:] if "class AcmeProvider" in b)
    namespace: dict[str, Any] = {}
    exec(block.split("```")[0], namespace)
    provider = namespace["AcmeProvider"]()

    class AcmePlugin:
        @hookimpl
        def register_providers(self, register: Callable[[Provider], None]) -> None:
            register(provider)

    plugins = Plugins.load()
    plugins.register(AcmePlugin(), name="acme")
    try:
        config = load_config({}, known_providers=plugins.providers())
        router = Router(config, plugins=plugins, ledger=False)
        offers = {o.provider: o for o in router.quote("x", n=2)}
        assert offers["acme"].eligible and offers["acme"].total_usd == Decimal("0.10")
        assert router.quote("x", n=2)[0].provider == "acme"  # $0.10 beats RunAPI's $0.12
        edit = {o.provider: o for o in router.quote("x", images=[b"x"])}
        assert edit["acme"].reason == "Acme cannot edit images"
    finally:
        plugins.unregister(name="acme")

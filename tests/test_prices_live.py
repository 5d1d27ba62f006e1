"""Live prices: `prices refresh` reads RunAPI's price schedules (from the emulator on loopback),
stores them dated, quotes and routing use them, `--drift` shows them, overrides still win."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from imagerouter_runapi.emulator_prices import set_emulated_prices
from imagerouter_runapi.price_schedules import parse_price_schedules

from imagerouter import Router
from imagerouter.cli import cli
from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.live_prices import base_table, drift, latest_snapshot, prices_dir, refresh
from imagerouter.plugins import Plugins

from .conftest import MakeRouter, base_config

runner = CliRunner()
CHEAPER = {"gpt-image-2": {"generate": {"1k": "0.05"}}}


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli, list(args))
    return result.exit_code, result.output


def runapi_price(router: Router, **options: Any) -> Decimal | None:
    offers = router.quote("a lighthouse", **options)
    offer = next(o for o in offers if o.provider == "runapi")
    assert offer.eligible, offer.reason
    return offer.per_image_usd


def config_file(tmp_path: Path, emulators: Emulators, extra: dict[str, Any] | None = None) -> Path:
    """A real (not emulated) config whose providers are the loopback emulators."""
    data = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        data["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    for key, value in (extra or {}).items():
        data[key] = value
    path = tmp_path / "imagerouter.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)  # it holds the emulators' keys
    return path


def test_a_refreshed_runapi_price_changes_quote_routing_and_billing(
    emulators: Emulators, make_router: MakeRouter, plugins: Plugins, isolated_home: Path
) -> None:
    set_emulated_prices(emulators.apps["runapi"], CHEAPER)  # RunAPI lowers its 1k price
    before = make_router()
    assert runapi_price(before, size="1024x1024") == Decimal("0.06")  # the shipped table

    results = asyncio.run(refresh(plugins.providers(), before.config))
    by_name = {r.provider: r for r in results}
    assert by_name["runapi"].status == "updated"
    assert "gpt-image-2.generate.1k" in by_name["runapi"].changed
    assert by_name["runflow"].status == "unpublished"
    stored = by_name["runapi"].path
    assert stored is not None and stored.is_file()
    # Emulated runs keep their prices apart from real ones.
    assert stored.parent == isolated_home / "prices.emulated" / "runapi"
    assert prices_dir(before.config) == isolated_home / "prices.emulated"

    after = make_router()
    assert runapi_price(after, size="1024x1024") == Decimal("0.05")
    assert runapi_price(after, size="1536x1024") == Decimal("0.10")  # unchanged leaf
    table = after.prices()["runapi"]
    assert "gpt-image-2.generate.1k" in table.live and table.live_on

    rows = {row.path: row for row in drift(plugins.providers(), after.config)}
    assert set(rows) == {"gpt-image-2.generate.1k"}
    assert rows["gpt-image-2.generate.1k"].shipped_usd == Decimal("0.06")
    assert rows["gpt-image-2.generate.1k"].change_usd == Decimal("-0.01")

    # Routing quotes the live price, and the emulator bills it: no drift in `spend`.
    result = after.generate("a lighthouse", size="1024x1024", providers=("runapi",))
    assert result.cost_usd == Decimal("0.05")
    assert emulators.apps["runapi"].counters.billed_usd == Decimal("0.05")
    assert after.ledger is not None
    (total,) = after.ledger.spend()
    assert total.billed_usd == Decimal("0.05") and not total.drift_flagged

    # RunAPI raises the price again without a refresh: billed differs from quoted, flagged.
    set_emulated_prices(emulators.apps["runapi"], {"gpt-image-2": {"generate": {"1k": "0.07"}}})
    after.generate("a lighthouse", size="1024x1024", providers=("runapi",))
    (total,) = after.ledger.spend()
    assert total.drift_flagged and total.drift_usd == Decimal("0.02")


def test_cli_refresh_then_quote_drift_and_prices(emulators: Emulators, tmp_path: Path) -> None:
    set_emulated_prices(emulators.apps["runapi"], CHEAPER)
    config = config_file(tmp_path, emulators)
    code, out = invoke("quote", "x", "--config", str(config), "--size", "1024x1024", "--json")
    runapi = next(o for o in json.loads(out)["offers"] if o["provider"] == "runapi")
    assert code == 0 and runapi["per_image_usd"] == "0.06"

    code, out = invoke("prices", "refresh", "--config", str(config), "--json")
    assert code == 0, out
    data = json.loads(out)
    status = {r["provider"]: r["status"] for r in data["results"]}
    assert status["runapi"] == "updated" and status["runflow"] == "unpublished"
    assert Path(data["dir"]).name == "prices"  # a real config: the real prices directory

    code, out = invoke("quote", "x", "--config", str(config), "--size", "1024x1024", "--json")
    runapi = next(o for o in json.loads(out)["offers"] if o["provider"] == "runapi")
    assert code == 0 and runapi["per_image_usd"] == "0.05"

    code, out = invoke("prices", "--drift", "--config", str(config), "--json")
    assert code == 0, out
    drift_rows = json.loads(out)["drift"]
    assert [(r["provider"], r["path"], r["shipped_usd"], r["live_usd"]) for r in drift_rows] == [
        ("runapi", "gpt-image-2.generate.1k", "0.06", "0.05")
    ]
    code, out = invoke("prices", "--drift", "--config", str(config))
    assert code == 0 and "gpt-image-2.generate.1k" in out and "-$0.01" in out.replace(" ", "")

    code, out = invoke("prices", "--config", str(config))
    assert code == 0 and "live 20" in out  # the leaf's source: live, with its date

    # A second refresh revalidates with the stored ETag: 304, nothing changed.
    code, out = invoke("prices", "refresh", "--config", str(config), "--json")
    (runapi_result,) = [r for r in json.loads(out)["results"] if r["provider"] == "runapi"]
    assert runapi_result["status"] == "unchanged" and "304" in runapi_result["detail"]


def test_user_overrides_still_win_over_live_prices(
    emulators: Emulators, make_router: MakeRouter, plugins: Plugins
) -> None:
    set_emulated_prices(emulators.apps["runapi"], CHEAPER)
    overrides = {"providers": {"runapi": {"prices": {"gpt-image-2": {"generate": {"1k": "0.02"}}}}}}
    router = make_router(overrides)
    asyncio.run(refresh(plugins.providers(), router.config))
    again = make_router(overrides)
    assert runapi_price(again, size="1024x1024") == Decimal("0.02")
    assert "gpt-image-2.generate.1k" in again.prices()["runapi"].overridden


def test_prices_live_false_uses_the_shipped_tables(
    emulators: Emulators, make_router: MakeRouter, plugins: Plugins
) -> None:
    set_emulated_prices(emulators.apps["runapi"], CHEAPER)
    asyncio.run(refresh(plugins.providers(), make_router().config))
    router = make_router({"prices": {"live": False}})
    assert runapi_price(router, size="1024x1024") == Decimal("0.06")


def test_a_failed_refresh_is_reported_and_changes_nothing(
    emulators: Emulators, tmp_path: Path
) -> None:
    config = config_file(tmp_path, emulators)
    data = yaml.safe_load(config.read_text())
    data["providers"]["runapi"]["base_url"] = "http://127.0.0.1:9"  # nothing listens there
    config.write_text(yaml.safe_dump(data))
    code, out = invoke("prices", "refresh", "--config", str(config), "--json")
    assert code == 1
    (result,) = [r for r in json.loads(out)["results"] if r["provider"] == "runapi"]
    assert result["status"] == "failed"
    assert emulators.keys["runapi"] not in out
    loaded = load_config(config, known_providers=Plugins.load().providers())
    assert latest_snapshot(loaded, "runapi") is None


def test_a_broken_snapshot_is_ignored(
    emulators: Emulators, make_router: MakeRouter, plugins: Plugins
) -> None:
    set_emulated_prices(emulators.apps["runapi"], CHEAPER)
    router = make_router()
    asyncio.run(refresh(plugins.providers(), router.config))
    folder = prices_dir(router.config) / "runapi"
    (folder / "99991231T000000000000Z.json").write_text("{not json")
    provider = plugins.providers()["runapi"]
    # The newest readable snapshot is used; quoting never breaks on a damaged file.
    assert base_table(provider, router.config).lookup("gpt-image-2", "generate", "1k") == (
        Decimal("0.05")
    )


def test_a_snapshot_older_than_the_shipped_table_is_not_used(
    emulators: Emulators, make_router: MakeRouter, plugins: Plugins
) -> None:
    """An upgraded plugin ships prices read after an old refresh: the newer table wins."""
    set_emulated_prices(emulators.apps["runapi"], CHEAPER)
    router = make_router()
    long_ago = datetime(2026, 1, 5, tzinfo=UTC)  # before the shipped read_on (2026-08-21)
    (result, *_) = [
        r
        for r in asyncio.run(refresh(plugins.providers(), router.config, now=lambda: long_ago))
        if r.provider == "runapi"
    ]
    assert result.status == "updated" and result.path is not None
    assert result.path.name.startswith("20260105T")
    assert runapi_price(make_router(), size="1024x1024") == Decimal("0.06")
    assert drift(plugins.providers(), router.config) == []


def test_an_emulated_refresh_never_reaches_a_real_quote(isolated_home: Path) -> None:
    code, out = invoke("prices", "refresh", "--emulate", "--provider", "runapi", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert Path(data["dir"]) == isolated_home / "prices.emulated"
    assert [r["status"] for r in data["results"]] == ["updated"]
    assert not (isolated_home / "prices").exists()
    code, out = invoke("prices", "--drift", "--json")
    assert code == 0 and json.loads(out)["snapshots"] == []


def test_unknown_provider_is_bad_input() -> None:
    code, out = invoke("prices", "refresh", "--provider", "nope")
    assert code == 2 and "nope" in out


def test_the_official_sdk_reads_the_emulated_schedules(emulators: Emulators) -> None:
    """RunAPI's own Python SDK (a client nobody here wrote) parses what the emulator serves."""
    from runapi.core import PricingClient

    client = PricingClient(base_url=emulators.url("runapi"))
    listed = client.list_schedules(service="gpt_image_2")
    assert listed is not None
    services = {(s.service, s.action) for s in listed.price_schedules}
    assert ("gpt_image_2", "text_to_image") in services
    assert all(s.currency == "USD" for s in listed.price_schedules)


@pytest.fixture
def shipped(plugins: Plugins) -> Any:
    return plugins.providers()["runapi"].price_table()


def test_parse_flat_schedule_replaces_every_resolution(shipped: Any) -> None:
    body = {
        "as_of": "2026-09-01T00:00:00Z",
        "price_schedules": [
            {
                "service": "gpt_image_2",
                "action": "text_to_image",
                "model": "gpt-image-2",
                "pricing_status": "available",
                "catalog_status": "active",
                "currency": "USD",
                "billing_unit": "per_call",
                "billing_strategy": "flat",
                "unit_price_cents": 8,
            },
            {
                "service": "gpt_image",
                "action": "edit_image",
                "model": "gpt-image-1.5",
                "pricing_status": "unavailable",
                "catalog_status": "active",
                "currency": "USD",
            },
            {
                "service": "gpt_image",
                "action": "text_to_image",
                "model": "gpt-image-1.5",
                "pricing_status": "available",
                "catalog_status": "active",
                "currency": "EUR",
                "unit_price_cents": 4,
            },
            {
                "service": "nano_banana",
                "action": "text_to_image",
                "model": "nano-banana",
                "pricing_status": "available",
                "catalog_status": "active",
                "currency": "USD",
                "unit_price_cents": 5,
            },
        ],
    }
    tree, skipped = parse_price_schedules(body, shipped)
    assert tree == {
        "gpt-image-2": {"generate": {key: Decimal("0.08") for key in ("*", "1k", "2k", "4k")}}
    }
    assert len(skipped) == 2
    assert any("pricing_status" in s for s in skipped) and any("EUR" in s for s in skipped)


def test_parse_rejects_an_answer_without_schedules(shipped: Any) -> None:
    with pytest.raises(ValueError, match="price_schedules"):
        parse_price_schedules({"as_of": "x"}, shipped)

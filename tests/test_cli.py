"""The command line, driven as a user would (click's runner; emulators for paid commands)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from imagerouter.cli import cli

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli, list(args))
    return result.exit_code, result.output


def test_quote_json_lists_every_backend_ranked() -> None:
    code, out = invoke("quote", "a cat", "--quality", "medium", "-n", "6", "--json")
    assert code == 0, out
    offers = json.loads(out)["offers"]
    for key in ("provider", "model", "eligible", "per_image_usd", "total_usd", "params", "reason"):
        assert all(key in offer for offer in offers)
    eligible = [o for o in offers if o["eligible"]]
    assert eligible and offers[: len(eligible)] == eligible
    totals = [Decimal(o["total_usd"]) for o in eligible]
    assert totals == sorted(totals)
    runflow = next(o for o in offers if o["provider"] == "runflow")
    assert runflow["total_usd"] == "0.204" and runflow["tasks"] == 2
    runapi = next(o for o in offers if o["provider"] == "runapi")
    assert not runapi["eligible"] and "quality" in runapi["reason"]


def test_quote_edit_and_table_output() -> None:
    code, out = invoke("quote", "fix it", "--edit-images", "2", "--mask")
    assert code == 0, out
    assert "runflow" in out and "mask" in out


def test_quote_bad_input_names_the_field() -> None:
    code, out = invoke("quote", "x", "-n", "11")
    assert code == 2
    assert "n:" in out and "1 to 10" in out


def test_prices_json_has_sources_dates_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "providers:\n  runapi:\n    prices:\n      gpt-image-2:\n        generate:\n"
        "          1k: '0.05'\n"
    )
    code, out = invoke("prices", "--config", str(config), "--json")
    assert code == 0, out
    tables = {t["provider"]: t for t in json.loads(out)["prices"]}
    assert tables["runapi"]["prices"]["gpt-image-2"]["generate"]["1k"] == "0.05"
    assert tables["runapi"]["overridden"] == ["gpt-image-2.generate.1k"]
    assert tables["runflow"]["source"] and tables["runflow"]["read_on"]
    code, out = invoke("quote", "x", "--config", str(config), "--json")
    assert json.loads(out)["offers"][0]["total_usd"] == "0.05"


def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("routing:\n  strategy: cheapest\n")
    assert invoke("config", "check", str(good))[0] == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tiers:\n  draft:\n    - provider: runflow\n      model: gpt-image-2\n"
        "      quality: ultra\n"
    )
    code, out = invoke("config", "check", str(bad))
    assert code == 2
    assert "bad.yaml:5: tiers.draft[0].quality" in out and "ultra" in out


def test_generate_without_keys_says_what_to_do() -> None:
    code, out = invoke("generate", "a cat")
    assert code == 1
    assert "RUNAPI_API_KEY" in out and "--emulate" in out


def test_generate_emulated_json(tmp_path: Path) -> None:
    code, out = invoke(
        "generate", "a lighthouse at dusk", "--emulate", "-o", str(tmp_path / "o"), "--json"
    )
    assert code == 0, out
    result = json.loads(out)
    for key in ("provider", "model", "cost_usd", "images", "attempts"):
        assert key in result
    image = result["images"][0]
    assert Path(image["path"]).exists() and image["sha256"]
    code, out = invoke("spend", "--json", "--by", "provider")
    rows = json.loads(out)["rows"]
    assert rows[0]["key"] == result["provider"] and rows[0]["served"] == 1
    code, out = invoke("history", "--json")
    assert json.loads(out)["requests"][0]["request_id"] == result["request_id"]


def test_generate_emulated_with_faults_fails_over(tmp_path: Path) -> None:
    code, out = invoke(
        "generate",
        "x",
        "--emulate",
        "--faults",
        "runapi=create:503@1",
        "--json",
        "-o",
        str(tmp_path),
    )
    assert code == 0, out
    result = json.loads(out)
    assert result["provider"] == "runflow"
    assert result["attempts"][0]["provider"] == "runapi"


def test_edit_emulated(tmp_path: Path, input_png: Path) -> None:
    code, out = invoke(
        "edit",
        str(input_png),
        "--prompt",
        "make it blue",
        "--emulate",
        "--json",
        "-o",
        str(tmp_path / "e"),
    )
    assert code == 0, out
    assert json.loads(out)["operation"] == "edit"


def test_edit_missing_file_is_named_before_any_call(tmp_path: Path) -> None:
    code, out = invoke("edit", str(tmp_path / "nope.png"), "--prompt", "x", "--emulate")
    assert code == 1
    assert "nope.png" in out


def test_health_and_providers_json() -> None:
    code, out = invoke("health", "--json")
    assert code == 0, out
    backends = json.loads(out)["backends"]
    assert {b["provider"] for b in backends} == {"runapi", "runflow"}
    code, out = invoke("providers", "--json")
    names = [p["name"] for p in json.loads(out)["providers"]]
    assert "runapi" in names and "runflow" in names


@pytest.mark.parametrize("since", ["7d", "24h", "2026-01-01"])
def test_spend_since_forms(since: str) -> None:
    code, out = invoke("spend", "--since", since, "--json")
    assert code == 0, out
    assert yaml.safe_load(out)["since"] == since


def test_health_free_checks_against_the_emulators(emulators: object, tmp_path: Path) -> None:
    from imagerouter.emulated import Emulators

    assert isinstance(emulators, Emulators)
    config = tmp_path / "c.yaml"
    providers = {
        name: {"base_url": emulators.url(name), "api_key": emulators.keys[name]}
        for name in ("runapi", "runflow")
    }
    config.write_text(yaml.safe_dump({"providers": providers}))
    code, out = invoke("health", "--check", "--config", str(config), "--json")
    assert code == 0, out
    checks = json.loads(out)["checks"]
    assert checks["runapi"]["ok"] and checks["runapi"]["balance_usd"] is not None
    assert checks["runflow"]["ok"]
    assert sum(emulators.created().values()) == 0  # free checks never create a job

"""The command line, driven as a user would (click's runner; emulators for paid commands)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from imagerouter.cli import cli
from imagerouter.paths import emulated_ledger_path

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
    assert code == 2  # a missing key is bad config: nothing was sent
    assert "RUNAPI_API_KEY" in out and "--emulate" in out


def test_the_missing_key_hint_fits_the_command() -> None:
    from imagerouter.errors import MissingApiKeyError

    # The library's message names the variable and no CLI flag (the Python API has none).
    assert "--" not in str(MissingApiKeyError("runapi", "RUNAPI_API_KEY"))
    code, out = invoke("health", "--check")
    assert code == 0, out
    assert "RUNAPI_API_KEY" in out and "RUNFLOW_API_KEY" in out
    assert "--emulate" not in out  # health has no --emulate


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
    # Emulated runs keep their own ledger (ledger.emulated.db); read it through a config.
    emulated = tmp_path / "emulated.yaml"
    emulated.write_text(f"ledger:\n  path: {emulated_ledger_path()}\n")
    code, out = invoke("spend", "--json", "--by", "provider", "--config", str(emulated))
    rows = json.loads(out)["rows"]
    assert rows[0]["key"] == result["provider"] and rows[0]["served"] == 1
    code, out = invoke("history", "--json", "--config", str(emulated))
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
    assert code == 2  # bad input, refused before any call
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


def _emulators_config(emulators: object, tmp_path: Path) -> Path:
    """A config file pointing both providers at the running emulators."""
    from imagerouter.emulated import Emulators

    assert isinstance(emulators, Emulators)
    config = tmp_path / "c.yaml"
    providers = {
        name: {"base_url": emulators.url(name), "api_key": emulators.keys[name]}
        for name in ("runapi", "runflow")
    }
    config.write_text(yaml.safe_dump({"providers": providers}))
    return config


def test_health_free_checks_against_the_emulators(emulators: object, tmp_path: Path) -> None:
    config = _emulators_config(emulators, tmp_path)
    code, out = invoke("health", "--check", "--config", str(config), "--json")
    assert code == 0, out
    checks = json.loads(out)["checks"]
    assert checks["runapi"]["ok"] and checks["runapi"]["balance_usd"] is not None
    assert checks["runflow"]["ok"]
    assert sum(emulators.created().values()) == 0  # free checks never create a job


# --- the terminal ---------------------------------------------------------------------------


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """An 80-column terminal for every table the commands print."""
    from imagerouter.cli import common

    monkeypatch.setattr(common.console, "width", 80)
    monkeypatch.setattr(common.err_console, "width", 80)


def _emulated_config(tmp_path: Path) -> Path:
    config = tmp_path / "emulated.yaml"
    config.write_text(f"ledger:\n  path: {emulated_ledger_path()}\n")
    return config


def test_history_prints_stored_control_characters_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagerouter.cli import common
    from imagerouter.ledger import Ledger

    monkeypatch.setattr(common.console, "width", 300)  # the prompt on one line

    ledger = Ledger(tmp_path / "l.db")
    prompt = "title \x1b]0;pwned\x07 red \x1b[31m [bold]markup[/bold] \u202eevil"
    ledger.begin_request(
        "ir-20260101-000000-deadbeef", operation="generate", model="gpt-image-2", tier=None,
        prompt=prompt, request={}, output_dir=str(tmp_path), quoted_usd=Decimal("0.06"),
    )
    ledger.close()
    config = tmp_path / "c.yaml"
    config.write_text(f"ledger:\n  path: {tmp_path / 'l.db'}\n")
    code, out = invoke("history", "--config", str(config))
    assert code == 0, out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b]0;pwned\\x07" in out and "\\x1b[31m" in out and "\\u202e" in out
    assert "[bold]markup[/bold]" in out  # shown, not read as markup


def test_80_columns_never_cut_ids_money_or_parameters(tmp_path: Path, narrow: None) -> None:
    code, out = invoke(
        "generate", "a lighthouse", "--emulate", "--json", "-o", str(tmp_path),
        "--faults", "runapi=create:503@1",
    )
    assert code == 0, out
    result = json.loads(out)
    config = str(_emulated_config(tmp_path))
    code, out = invoke("history", "--config", config)
    assert result["request_id"] in out and "…" not in out
    code, out = invoke("spend", "--by", "provider", "--config", config)
    assert "runapi" in out and "runflow" in out and "…" not in out
    assert f"${Decimal(result['cost_usd']):.3f}" in out
    code, out = invoke("quote", "a lighthouse", "--quality", "medium", "-n", "6")
    assert "quality=medium" in out and "image_size=1024x1024" in out and "…" not in out


def test_spend_figures_agree_and_money_has_one_precision(tmp_path: Path) -> None:
    # runapi refuses (503) and the request fails over: runapi has 0 served requests and
    # 1 failed attempt; its fail rate is of attempts, shown next to them.
    for _ in range(2):
        code, out = invoke(
            "generate", "x", "--emulate", "--json", "-o", str(tmp_path),
            "--faults", "runapi=create:503@1",
        )
        assert code == 0, out
    code, out = invoke("spend", "--by", "provider", "--config", str(_emulated_config(tmp_path)))
    assert code == 0, out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("run")}
    # The second table (requests and attempts) overwrites the first's rows in `rows`.
    # requests, served, failed, interrupted, attempts, failed attempts, attempt fail rate
    assert rows["runapi"][1:8] == ["0", "0", "0", "0", "2", "2", "100%"]
    assert rows["runflow"][1:8] == ["2", "2", "0", "0", "2", "0", "0%"]
    decimals = {len(m) for m in __import__("re").findall(r"\$\d+\.(\d+)", out)}
    assert len(decimals) == 1, out


def test_verbose_works_after_the_subcommand_one_line_per_attempt(tmp_path: Path) -> None:
    import subprocess
    import sys

    def run(*flags: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", "from imagerouter.cli import main; main()", "generate", "x",
             "--emulate", "--json", "-o", str(tmp_path), *flags],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    once = run("-v")
    assert once.count("imagerouter.routing attempt") == 1
    assert "HTTP Request" not in once  # polls are -vv
    twice = run("-vv")
    assert "HTTP Request: GET" in twice  # every poll


def test_config_check_names_the_active_providers(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("providers:\n  runapi:\n    enabled: false\n")
    code, out = invoke("config", "check", str(config))
    assert code == 0, out
    assert "active providers runflow" in out  # runapi is off; runflow stays on by default
    code, out = invoke("config", "check", "--config", str(config), "--json")
    assert json.loads(out)["active_providers"] == ["runflow"]


def test_prices_gives_every_column_a_header() -> None:
    code, out = invoke("prices")
    assert code == 0, out
    headers = [line for line in out.splitlines() if "model.operation.dimensions" in line]
    assert headers and all(line.split()[1:] == ["USD", "per", "image", "source"]
                           for line in headers)


def test_health_check_prints_the_balance_once(emulators: object, tmp_path: Path) -> None:
    config = _emulators_config(emulators, tmp_path)
    code, out = invoke("health", "--check", "--config", str(config))
    assert code == 0, out
    [line] = [line for line in out.splitlines() if line.startswith("runapi:")]
    assert line.count("balance") == 1 and line.count("$") == 1, line


def test_the_live_table_keeps_each_attempt_with_its_outcome(
    make_router: Any, emulators: Any
) -> None:
    import io

    from rich.console import Console

    from imagerouter.cli.live import AttemptBoard

    def run(fault: str) -> tuple[list[Any], str]:
        emulators.apps["runapi"].options.faults.clear()
        emulators.apps["runapi"].options.faults.add(fault)
        router = make_router()
        board = AttemptBoard()
        router.plugins.register(board, name="test-live-board")
        try:
            router.generate("x", progress=board.note)
        finally:
            router.plugins.unregister(name="test-live-board")
        screen = Console(file=io.StringIO(), width=80)
        screen.print(board.table("live"))
        return board.rows(), screen.file.getvalue()  # type: ignore[attr-defined]

    rows, shown = run("create:503@1")
    assert [(r.attempt, r.provider, r.outcome.split()[0]) for r in rows] == [
        (1, "runapi", "failed"), (2, "runflow", "served")
    ]
    assert "503" in rows[0].reason and "503" in shown  # the failed attempt stays, with why
    rows, shown = run("create:seq=reset_after_send,ok")  # answer lost, replayed: one task
    assert [(r.attempt, r.provider, r.outcome.split()[0]) for r in rows] == [
        (1, "runapi", "served")
    ]
    assert "replayed with the same key" in rows[0].reason
    assert "replayed" in shown

"""Running batches on the emulators: the Python API, the cost cap, the plan, the CLI."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from imagerouter.batch import BatchOutcome, CostCap, parse_file, plan_batch
from imagerouter.cli import cli
from imagerouter.emulated import Emulators

from .conftest import MakeRouter, base_config

PROMPTS = [{"prompt": f"a lighthouse number {i}", "quality": "low"} for i in range(6)]


def total(emulators: Emulators) -> int:
    return sum(emulators.created().values())


def test_router_batch_runs_every_line_once(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    router = make_router()
    outcomes = router.batch(PROMPTS, concurrency=3, output_dir=tmp_path / "o", source="job-1")
    assert sorted(o.line for o in outcomes) == list(range(1, 7))
    assert all(o.status == "succeeded" for o in outcomes), outcomes
    assert total(emulators) == 6
    for outcome in outcomes:
        assert [Path(p).exists() for p in outcome.paths] == [True]
    # The same batch again: every line comes back from the ledger, nothing is paid.
    again = router.batch(PROMPTS, concurrency=3, output_dir=tmp_path / "o", source="job-1")
    assert total(emulators) == 6
    assert {o.id: o.paths for o in again} == {o.id: o.paths for o in outcomes}


def test_abatch_is_an_async_iterator(make_router: MakeRouter, emulators: Emulators) -> None:
    router = make_router()

    async def run() -> list[BatchOutcome]:
        return [o async for o in router.abatch(PROMPTS[:3], concurrency=2)]

    outcomes = asyncio.run(run())
    assert len(outcomes) == 3 and all(o.ok for o in outcomes)
    assert total(emulators) == 3


def test_dry_run_total_is_what_the_run_spends(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": "a", "quality": "low"},
        {"prompt": "b", "tier": "standard", "n": 2},
        {"prompt": "c", "size": "1536x1024", "quality": "medium"},
        {"prompt": "d", "model": "gpt-image-1.5", "id": "d"},
    ]
    path = tmp_path / "b.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    router = make_router()
    plan = plan_batch(router, parse_file(path))
    assert {"runapi", "runflow"} <= set(plan.by_provider)
    outcomes = router.batch(rows, output_dir=tmp_path / "o")
    assert all(o.ok for o in outcomes)
    assert sum((o.cost_usd for o in outcomes), Decimal(0)) == plan.total_usd


def test_max_cost_is_a_hard_cap_under_concurrency(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    router = make_router()
    plan = plan_batch(router, parse_file(_write(tmp_path / "p.jsonl", PROMPTS)))
    each = plan.lines[0].cost_usd
    assert all(p.cost_usd == each for p in plan.lines)
    cap = each * 2 + each / 2  # room for two and a half lines
    outcomes = router.batch(PROMPTS, concurrency=6, max_cost_usd=cap, source="capped")
    ran = [o for o in outcomes if o.status == "succeeded"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    assert (len(ran), len(skipped)) == (2, 4)
    assert total(emulators) == 2
    assert sum((o.cost_usd for o in outcomes), Decimal(0)) <= cap
    assert "--max-cost" in (skipped[0].error or "")
    # Started again with the same cap: what was spent counts, nothing more is paid.
    again = router.batch(PROMPTS, concurrency=6, max_cost_usd=cap, source="capped")
    assert [o.status for o in again].count("succeeded") == 2
    assert total(emulators) == 2


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _config_file(emulators: Emulators, tmp_path: Path) -> Path:
    config = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        config["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    path = tmp_path / "imagerouter.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_dry_run_then_run_then_report(emulators: Emulators, tmp_path: Path) -> None:
    config = _config_file(emulators, tmp_path)
    batch = _write(tmp_path / "b.jsonl", [*PROMPTS[:4], {"prompt": "x", "id": "named", "n": 2}])
    runner = CliRunner()
    base = ["batch", str(batch), "--config", str(config)]
    dry = runner.invoke(cli, [*base, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    planned = json.loads(dry.output)
    assert [line["id"] for line in planned["lines"]][-1] == "named"
    assert {"runapi", "runflow"} <= set(planned["by_provider"])
    assert total(emulators) == 0
    text = runner.invoke(cli, [*base, "--dry-run"])
    assert "routed plan: 5 request(s)" in text.output and "all on runflow" in text.output

    report = tmp_path / "report.jsonl"
    run = runner.invoke(cli, [*base, "-o", str(tmp_path / "o"), "--report", str(report), "--json"])
    assert run.exit_code == 0, run.output
    summary = json.loads(run.output)
    assert summary["counts"] == {"succeeded": 5}
    assert Decimal(summary["spent_usd"]) == Decimal(planned["total_usd"])
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [line["line"] for line in lines] == [1, 2, 3, 4, 5]
    for line in lines:
        assert {"id", "status", "provider", "model", "cost_usd", "paths", "error"} <= set(line)
        assert all(Path(p).exists() for p in line["paths"])
    assert len(lines[-1]["paths"]) == 2
    assert total(emulators) == 6  # n=2 on one line

    # Not a terminal: one plain line per finished request on stderr.
    plain = runner.invoke(cli, [*base, "-o", str(tmp_path / "o")])
    assert plain.exit_code == 0, plain.output
    assert "[5/5]" in plain.output and "5 succeeded" in plain.output
    assert total(emulators) == 6


def test_edit_lines_and_cached_repeats(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path, input_png: Path
) -> None:
    router = make_router({"cache": {"enabled": True}})
    rows: list[dict[str, Any]] = [
        {"prompt": "make it blue", "images": [str(input_png)], "id": "edit"},
        {"prompt": "a plain mug", "quality": "low", "id": "gen"},
    ]
    first = {o.id: o for o in router.batch(rows, output_dir=tmp_path / "a", source="one")}
    assert {o.status for o in first.values()} == {"succeeded"}
    assert first["edit"].result is not None and first["edit"].result.operation == "edit"
    made = total(emulators)
    # Another batch (another source, so other keys) asking for the same images: from the cache.
    second = {o.id: o for o in router.batch(rows, output_dir=tmp_path / "b", source="two")}
    assert {o.status for o in second.values()} == {"cached"}
    assert all(o.cost_usd == 0 for o in second.values())
    assert all(Path(p).parent == tmp_path / "b" for o in second.values() for p in o.paths)
    assert total(emulators) == made
    # Refused per batch: paid again.
    third = router.batch(rows, output_dir=tmp_path / "c", source="three", cache=False)
    assert {o.status for o in third} == {"succeeded"}
    assert total(emulators) == 2 * made


def test_cost_cap_waits_for_running_lines_then_refuses() -> None:
    async def scenario() -> None:
        cap = CostCap(Decimal("1.0"), spent=Decimal("0.1"))
        running = [True]
        assert await cap.reserve(Decimal("0.5"), others_running=lambda: running[0])
        waiter = asyncio.create_task(cap.reserve(Decimal("0.5"), others_running=lambda: running[0]))
        await asyncio.sleep(0)
        assert not waiter.done()  # 0.4 left: it waits for the running line
        cap.settle(Decimal("0.5"), Decimal("0.3"))  # that line cost less than it held
        assert await waiter
        assert cap.remaining == Decimal("0.1")
        running[0] = False
        assert not await cap.reserve(Decimal("0.2"), others_running=lambda: running[0])

    asyncio.run(scenario())

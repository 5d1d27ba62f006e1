"""The done-when test: a 50-line batch SIGKILLed twice mid-run and started again finishes with
exactly one paid create per line (counted at the emulators) and a complete report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import yaml

from imagerouter.emulated import Emulators
from imagerouter.emulation import LatencyModel

from .conftest import base_config

LINES = 50
# The emulators list a task the moment it is created, so the minute a real provider's search
# index may lag (reconcile.ABSENT_AFTER_S) is cut to a second: a create lost in a kill is
# still looked up, and proven absent sooner. The create count below checks it was right.
LAUNCH = (
    "import imagerouter.reconcile as r; r.ABSENT_AFTER_S = 1.0; "
    "from imagerouter.cli import main; main()"
)


def total(emulators: Emulators) -> int:
    return sum(emulators.created().values())


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def kill_after(process: subprocess.Popen[bytes], emulators: Emulators, creates: int) -> None:
    """SIGKILL once the emulators have counted `creates` paid creates (no sleeping guesses)."""
    deadline = time.monotonic() + 60
    try:
        while total(emulators) < creates:
            assert process.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline, f"only {total(emulators)} creates"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()


def test_killed_twice_then_finished_pays_once_per_line(
    emulators: Emulators, tmp_path: Path
) -> None:
    # Jobs take a while, so kills land with jobs accepted but not yet saved.
    for app in emulators.apps.values():
        app.options.latency = LatencyModel("fixed", 0.3)
    config = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        config["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    config_file = tmp_path / "imagerouter.yaml"
    config_file.write_text(yaml.safe_dump(config))
    batch = tmp_path / "catalog.jsonl"
    rows = [
        {"prompt": f"product photo {i}", "quality": "low", **({"id": f"p{i}"} if i % 2 else {})}
        for i in range(LINES)
    ]
    batch.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "images"
    report = tmp_path / "report.jsonl"
    args = [
        "batch",
        str(batch),
        "-o",
        str(out),
        "--config",
        str(config_file),
        "--concurrency",
        "6",
        "--report",
        str(report),
    ]
    log = tmp_path / "batch.log"

    dry = subprocess.run(
        [sys.executable, "-c", LAUNCH, *args, "--dry-run", "--json"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        check=True,
        timeout=60,
    )
    planned = Decimal(json.loads(dry.stdout)["total_usd"])
    assert total(emulators) == 0

    kill_after(start(args, log), emulators, 8)
    kill_after(start(args, log), emulators, 25)
    assert total(emulators) < LINES
    final = start([*args, "--json"], log)
    try:
        final.wait(timeout=120)
    finally:
        if final.poll() is None:
            final.kill()
    bad = [line for line in report.read_text().splitlines() if '"succeeded"' not in line]
    assert final.returncode == 0, "\n".join(bad)

    # Exactly one paid create per line, counted by the emulators themselves.
    assert total(emulators) == LINES
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(lines) == LINES and [line["line"] for line in lines] == list(range(1, LINES + 1))
    assert {line["status"] for line in lines} <= {"succeeded", "collected"}
    # Jobs accepted (0.3 s each) when a kill landed were collected, not sent again.
    assert "collected" in {line["status"] for line in lines}
    paths = [Path(p) for line in lines for p in line["paths"]]
    assert len(paths) == LINES and len(set(paths)) == LINES
    assert all(path.exists() for path in paths)
    # Nothing failed, so the run spent what the dry run priced.
    assert sum((Decimal(line["cost_usd"]) for line in lines), Decimal(0)) == planned

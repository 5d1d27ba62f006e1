"""A process killed after the provider accepted the job loses nothing: `resume` saves it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from imagerouter.cli import cli
from imagerouter.emulated import Emulators
from imagerouter.emulation import LatencyModel

from .conftest import accepted_tasks, base_config

SCRIPT = """
import json, sys
from imagerouter import Router
from imagerouter.config import load_config
data = json.loads(sys.argv[1])
router = Router(load_config(data))
router.generate("a lighthouse", n=1)
print("finished")  # never reached: the test kills us first
"""


def test_killed_after_accept_then_resume_collects(emulators: Emulators, tmp_path: Path) -> None:
    emulators.apps["runapi"].options.latency = LatencyModel("fixed", 1.0)
    config = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        config["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    config_file = tmp_path / "imagerouter.json"
    config_file.write_text(json.dumps(config))
    db = Path(config["ledger"]["path"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while accepted_tasks(db) == 0:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the task was never accepted"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert emulators.created()["runapi"] == 1
    out_dir = Path(config["output"]["dir"])
    assert not list(out_dir.glob("*.png")) if out_dir.exists() else True

    # Resume (through the CLI, as a user would) until the job has finished and is saved.
    yaml_config = tmp_path / "resume.yaml"
    import yaml

    yaml_config.write_text(yaml.safe_dump(config))
    runner = CliRunner()
    deadline = time.monotonic() + 20
    while True:
        result = runner.invoke(cli, ["resume", "--config", str(yaml_config), "--json"])
        assert result.exit_code == 0, result.output
        tasks = json.loads(result.output)["tasks"]
        if tasks and tasks[0]["state"] == "collected":
            break
        assert tasks and tasks[0]["state"] == "running", tasks
        assert time.monotonic() < deadline
        time.sleep(0.1)
    saved = [Path(p) for p in tasks[0]["images"]]
    assert len(saved) == 1 and saved[0].exists()
    again = runner.invoke(cli, ["resume", "--config", str(yaml_config), "--json"])
    assert json.loads(again.output)["tasks"] == []  # nothing left to collect
    assert emulators.created()["runapi"] == 1  # resume never creates a job

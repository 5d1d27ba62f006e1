"""`imagerouter serve --workers N`: refused without shared state; with it, N processes on one
socket in front of the emulators, sharing the ledger file and `shared.url: sqlite`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml
from click.testing import CliRunner

from imagerouter.cli import cli
from imagerouter.emulated import Emulators

from .conftest import base_config

BANNER = re.compile(r"on http://127\.0\.0\.1:(\d+)/v1")


def test_workers_with_memory_shared_state_is_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("routing:\n  strategy: cheapest\n")
    result = CliRunner().invoke(cli, ["serve", "--config", str(config), "--workers", "2"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "shared.url" in result.output


def test_workers_with_emulate_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("shared:\n  url: sqlite\n")
    result = CliRunner().invoke(
        cli, ["serve", "--config", str(config), "--workers", "3", "--emulate"]
    )
    assert result.exit_code == 2
    assert "--emulate" in result.output


def _config(emulators: Emulators, tmp_path: Path) -> Path:
    data: dict[str, Any] = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        data["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    data["shared"] = {"url": f"sqlite://{tmp_path / 'shared.db'}"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _wait_for_port(log: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        found = BANNER.search(log.read_text())
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no banner: {log.read_text()}")


def test_two_workers_serve_on_one_socket(emulators: Emulators, tmp_path: Path) -> None:
    config = _config(emulators, tmp_path)
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from imagerouter.cli import main; main()",
                "serve",
                "--config",
                str(config),
                "--port",
                "0",
                "--workers",
                "2",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        port = _wait_for_port(log, process)
        pids_line = re.search(r"2 workers \(pids (\d+), (\d+)\)", log.read_text())
        assert pids_line, log.read_text()
        base = f"http://127.0.0.1:{port}"

        def call(i: int) -> int:
            with httpx.Client(base_url=base, timeout=60) as http:
                body = {"prompt": f"a cat {i}", "response_format": "b64_json"}
                return http.post("/v1/images/generations", json=body).status_code

        # A worker may still be starting: /healthz answers once at least one serves.
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/healthz").status_code == 200
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(call, range(6)))
        assert codes == [200] * 6, log.read_text()
        assert sum(emulators.created().values()) == 6
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, log.read_text()


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from imagerouter.cli import main; main()",
                "serve",
                "--config",
                str(config),
                "--port",
                "0",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_job_created_on_one_replica_is_read_and_fetched_from_another(
    emulators: Emulators, tmp_path: Path
) -> None:
    config = _config(emulators, tmp_path)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    replicas = [_start(config, log) for log in logs]
    try:
        ports = [_wait_for_port(log, p) for log, p in zip(logs, replicas, strict=True)]
        a = httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}", timeout=30)
        b = httpx.Client(base_url=f"http://127.0.0.1:{ports[1]}", timeout=30)
        with a, b:
            accepted = a.post("/v1/images/jobs", json={"prompt": "a fox", "n": 2})
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["id"]
            deadline = time.monotonic() + 30
            while True:
                seen = b.get(f"/v1/images/jobs/{job_id}")
                assert seen.status_code == 200, seen.text
                if seen.json()["status"] == "succeeded" or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            body = seen.json()
            assert body["status"] == "succeeded", body
            assert len(body["file_ids"]) == 2
            for item, file_id in zip(body["result"]["data"], body["file_ids"], strict=True):
                assert item["url"].endswith(f"/v1/files/{file_id}")
                from_b = b.get(f"/v1/files/{file_id}/content")
                assert from_b.status_code == 200 and from_b.content[:4] == b"\x89PNG"
                assert a.get(f"/v1/files/{file_id}/content").content == from_b.content
            assert b.get("/v1/images/jobs/imgjob_000000000000000000000000").status_code == 404
        assert sum(emulators.created().values()) == 2
    finally:
        for process in replicas:
            process.send_signal(signal.SIGTERM)
        for process in replicas:
            try:
                process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()

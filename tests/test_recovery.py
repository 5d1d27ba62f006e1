"""Nothing paid is lost: possibly-billed creates are reconciled later and collected, a full
disk keeps the job collectable, interrupted and killed requests are closed with their cost,
and a request's images are numbered 1..n. All against the emulators over loopback."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import imagerouter.collect as collect_module
import imagerouter.download as download_module
from imagerouter import Router
from imagerouter.cli import cli
from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.emulation import LatencyModel
from imagerouter.errors import DownloadFailedError, ProviderError
from imagerouter.ledger import Ledger
from imagerouter.migrations import MIGRATIONS, migrate
from imagerouter.resume import sweep

from .conftest import MakeRouter, accepted_tasks, base_config


def _tasks(router: Router, request_id: str) -> list[dict[str, Any]]:
    assert router.ledger is not None
    tasks: list[dict[str, Any]] = router.ledger.request_detail(request_id)["tasks"]
    return tasks


def _request_id_of(router: Router) -> str:
    assert router.ledger is not None
    [row] = router.ledger.history(limit=1)
    return row.request_id


def _reservations(db: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT request_id, state, settled_usd FROM reservations"))


# -- possibly billed, then reconciled ------------------------------------------------------


def test_runflow_unknown_then_reconciled_is_collected_by_resume_without_a_second_create(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    runflow = emulators.apps["runflow"]
    # The create makes the run and loses the answer; every look-up by client_ref fails.
    runflow.options.faults.add("create:reset_after_send@1;find:500@1")
    router = make_router()
    with pytest.raises(ProviderError) as caught:
        router.generate("a lighthouse", model="gpt-image-1.5", quality="medium")
    assert caught.value.accepted == "unknown"
    assert "keeps looking it up" in str(caught.value) and "resume" in str(caught.value)
    request_id = _request_id_of(router)
    [task] = _tasks(router, request_id)
    assert task["state"] == "unknown" and task["possibly_billed"]
    assert router.ledger is not None
    assert router.ledger.watching() == {request_id: 1}
    assert emulators.created() == {"runapi": 0, "runflow": 1}

    # While the look-ups still fail, resume keeps it watched and changes nothing.
    [still] = router.resume()
    assert (still.state, still.task_id) == ("unknown", task["id"])
    assert "being watched" in still.detail

    runflow.options.faults.clear()  # the provider's lookup works again
    deadline = time.monotonic() + 10
    while True:
        outcomes = router.resume()
        states = [o.state for o in outcomes]
        if states == ["collected"]:
            break
        assert states in (["running"], []), outcomes
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [image] = outcomes[0].images
    assert Path(image).exists() and Path(image).parent == tmp_path / "out"
    assert emulators.created() == {"runapi": 0, "runflow": 1}  # no second create
    assert router.ledger.watching() == {}
    [task] = _tasks(router, request_id)
    assert task["state"] == "collected"
    assert router.resume() == []


def test_runapi_unknown_is_replayed_with_the_same_key_and_collected(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    runapi = emulators.apps["runapi"]
    # 1st send creates the task and loses the answer; the 3 same-key replays get 500s.
    runapi.options.faults.add("create:seq=reset_after_send,500,500,500")
    router = make_router()
    with pytest.raises(ProviderError) as caught:
        router.generate("a red fox")
    assert caught.value.accepted == "unknown"
    request_id = _request_id_of(router)
    [task] = _tasks(router, request_id)
    assert task["state"] == "unknown" and task["provider_task_id"] is None
    spec = json.loads(task["spec_json"])
    assert spec["idempotency_key"] == task["idempotency_key"]

    deadline = time.monotonic() + 10
    while (outcomes := router.resume()) and outcomes[0].state != "collected":
        assert outcomes[0].state == "running", outcomes
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [o.state for o in outcomes] == ["collected"]
    counters = runapi.counters.snapshot()
    assert counters["created"] == 1 and counters["replayed"] == 1  # the same task, replayed
    [task] = _tasks(router, request_id)
    assert task["state"] == "collected" and task["replayed"]
    assert Path(outcomes[0].images[0]).exists()


def test_a_lost_create_that_never_arrived_is_closed_as_not_sent(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    # The ledger's clock runs two minutes behind, so the task is old enough for "not
    # found" to prove it absent (a search may lag a create by seconds).
    past = Ledger(tmp_path / "ledger.db", now=lambda: datetime.now(UTC) - timedelta(minutes=2))
    emulators.apps["runflow"].options.faults.add("create:reset@1;find:500@1")
    router = make_router(ledger=past)
    with pytest.raises(ProviderError):
        router.generate("a lighthouse", model="gpt-image-1.5", quality="medium")
    request_id = _request_id_of(router)
    assert emulators.created()["runflow"] == 0
    [before] = _reservations(tmp_path / "ledger.db")
    assert before[1] == "settled" and Decimal(before[2] or 0) > 0  # counted as possibly billed

    emulators.apps["runflow"].options.faults.clear()
    [outcome] = router.resume()
    assert outcome.state == "not_sent"
    [task] = _tasks(router, request_id)
    assert task["state"] == "not_sent" and not task["possibly_billed"]
    # The late truth wins: the reservation no longer counts the image nobody made.
    assert _reservations(tmp_path / "ledger.db") == [(request_id, "settled", "0")]
    assert emulators.created()["runflow"] == 0


def test_a_later_request_to_the_same_backend_reconciles_its_unknowns_first(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    runflow = emulators.apps["runflow"]
    runflow.options.faults.add("create:reset_after_send@1;find:500@1")
    emulators.apps["runflow"].options.latency = LatencyModel("fixed", 0.0)
    router = make_router()
    with pytest.raises(ProviderError):
        router.generate("first", model="gpt-image-1.5", quality="medium")
    first = _request_id_of(router)
    runflow.options.faults.clear()
    router.recovery.checked_at.clear()  # as if RECHECK_S had passed
    time.sleep(0.1)  # the emulated job has finished
    result = router.generate("second", model="gpt-image-1.5", quality="medium")
    assert result.provider == "runflow"
    [task] = _tasks(router, first)
    assert task["state"] == "collected"  # found and collected before the second was sent
    assert emulators.created()["runflow"] == 2  # one run per request, no more


def test_the_sweeper_collects_without_sleeping_on_wall_time(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    runflow = emulators.apps["runflow"]
    runflow.options.latency = LatencyModel("fixed", 0.0)
    runflow.options.faults.add("create:reset_after_send@1;find:500@1")
    router = make_router()
    with pytest.raises(ProviderError):
        router.generate("swept", model="gpt-image-1.5", quality="medium")
    request_id = _request_id_of(router)
    runflow.options.faults.clear()
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    async def run() -> None:
        # Pass 1 finds the run, pass 2 (or 3) collects it.
        await sweep(lambda: router, interval=42.0, sleep=no_wait, passes=3)
        await router.aclose()

    time.sleep(0.1)
    asyncio.run(run())
    assert waits == [42.0, 42.0]
    assert router.ledger is not None
    with Ledger(router.ledger.path) as ledger:
        [task] = ledger.request_detail(request_id)["tasks"]
    assert task["state"] == "collected"
    assert emulators.created()["runflow"] == 1


# -- a full disk ---------------------------------------------------------------------------


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes into the output folder fail as on a full disk: the raw OSError a write of
    the downloaded bytes raises."""

    async def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(collect_module, "download_image", no_space)


def test_a_disk_full_while_renaming_is_reported_the_same_way(
    make_router: MakeRouter, emulators: Emulators, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_module, "_durable_replace", no_space)
    monkeypatch.setattr(download_module, "_write_atomically", no_space)
    with pytest.raises(DownloadFailedError) as caught:
        make_router().generate("a red fox")
    assert "No space left on device" in str(caught.value)
    assert "--output-dir" in str(caught.value)


def test_a_full_disk_keeps_the_job_collectable_and_resume_output_dir_saves_it(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = make_router()
    _full_disk(monkeypatch)
    with pytest.raises(DownloadFailedError) as caught:
        router.generate("a red fox", n=2)
    message = str(caught.value)
    assert "No space left on device" in message and "--output-dir" in message
    assert "127.0.0.1" not in message  # the emulator's URL is dead once we exit
    request_id = _request_id_of(router)
    assert router.ledger is not None and len(router.ledger.uncollected()) == 2

    # Still full: resume reports each task and goes on to the next one.
    outcomes = router.resume()
    assert [o.state for o in outcomes] == ["error", "error"]
    assert all("No space left" in o.detail for o in outcomes)

    monkeypatch.undo()
    elsewhere = tmp_path / "elsewhere"
    config = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        config["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    config["ledger"]["path"] = str(router.ledger.path)
    config_file = tmp_path / "resume.yaml"
    config_file.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(
        cli, ["resume", "--config", str(config_file), "--output-dir", str(elsewhere), "--json"]
    )
    assert result.exit_code == 0, result.output
    tasks = json.loads(result.output)["tasks"]
    assert [t["state"] for t in tasks] == ["collected", "collected"]
    saved = sorted(Path(p) for t in tasks for p in t["images"])
    assert len(saved) == 2 and all(p.parent == elsewhere and p.exists() for p in saved)
    assert emulators.created()["runapi"] == 2
    assert [t["state"] for t in _tasks(router, request_id)] == ["collected", "collected"]


def test_a_failed_download_names_the_task_and_resume_not_a_dead_url(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    emulators.apps["runapi"].options.faults.add("download:download_404@1")
    router = make_router()
    with pytest.raises(DownloadFailedError) as caught:
        router.generate("a red fox")
    message = str(caught.value)
    assert "http://" not in message and "127.0.0.1" not in message
    assert "imagerouter resume" in message
    [task] = _tasks(router, _request_id_of(router))
    assert task["provider_task_id"] in message


# -- interrupted and killed requests ------------------------------------------------------


def test_a_cancelled_request_is_interrupted_with_its_accepted_tasks_cost(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    emulators.apps["runapi"].options.latency = LatencyModel("fixed", 30.0)
    router = make_router()

    async def run() -> None:
        job = asyncio.ensure_future(router.agenerate("two foxes", n=2))
        assert router.ledger is not None
        for _ in range(2000):
            await asyncio.sleep(0.005)
            rows = router.ledger.history(limit=1)
            tasks = [t for row in rows for t in _tasks(router, row.request_id)]
            if len(tasks) == 2 and all(t["provider_task_id"] for t in tasks):
                break
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await router.aclose()

    asyncio.run(run())
    [interruption] = router.recovery.interruptions
    request_id = interruption.request_id
    assert router.ledger is not None
    db = router.ledger.path
    with Ledger(db) as ledger:
        detail = ledger.request_detail(request_id)
    assert detail["request"]["status"] == "interrupted"
    assert Decimal(detail["request"]["cost_usd"]) == Decimal("0.12")  # 2 accepted x $0.06
    assert interruption.cost_usd == Decimal("0.12")
    text = interruption.message()
    for task in detail["tasks"]:
        assert task["provider_task_id"] in text
    assert "imagerouter resume" in text and request_id in text
    assert _reservations(db) == [(request_id, "settled", "0.12")]
    with Ledger(db) as ledger:
        [total] = ledger.spend()
    # Counted as interrupted (not served, not failed), and its accepted tasks count as spent.
    assert (total.requests, total.served, total.failed, total.interrupted) == (1, 0, 0, 1)
    assert total.as_dict()["interrupted"] == 1
    assert total.quoted_usd == Decimal("0.12")


SCRIPT = """
import json, sys
from imagerouter import Router
from imagerouter.config import load_config
router = Router(load_config(json.loads(sys.argv[1])))
router.generate("a lighthouse", n=2)
"""


def _run_until_accepted(args: list[str], db: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while accepted_tasks(db) < 2:
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        assert time.monotonic() < deadline, "the tasks were never accepted"
        time.sleep(0.02)
    return process


def _emulated_config(emulators: Emulators, tmp_path: Path) -> dict[str, Any]:
    config = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        config["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    return config


def test_resume_closes_a_killed_request_and_settles_its_reservations(
    emulators: Emulators, tmp_path: Path
) -> None:
    emulators.apps["runapi"].options.latency = LatencyModel("fixed", 0.5)
    config = _emulated_config(emulators, tmp_path)
    db = Path(config["ledger"]["path"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    process = _run_until_accepted([sys.executable, "-c", SCRIPT, json.dumps(config)], db, env)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    # A second request of the dead process reserved its budget and never sent a create.
    ledger = Ledger(db)
    ledger.begin_request("ir-never-sent", operation="generate", model="gpt-image-2", tier=None,
                         prompt="x", request={"n": 1}, output_dir=str(tmp_path / "out"),
                         quoted_usd=Decimal("0.06"), owner_pid=process.pid)
    ledger.reserve("rsv-never-sent", request_id="ir-never-sent", amount=Decimal("0.06"),
                   limits=[])
    assert {state for _, state, _ in _reservations(db)} == {"open"}
    time.sleep(0.6)  # the jobs have finished at the provider

    router = Router(load_config(config))  # the config the killed process ran with
    try:
        outcomes = router.resume()
    finally:
        router.close()
    assert [o.state for o in outcomes] == ["collected", "collected"]
    statuses = {row.request_id: row.status for row in ledger.history()}
    assert set(statuses.values()) == {"interrupted"}
    reservations = _reservations(db)
    assert ("ir-never-sent", "released", None) in reservations
    settled = [r for r in reservations if r[0] != "ir-never-sent"]
    assert [(state, amount) for _, state, amount in settled] == [("settled", "0.12")]
    assert emulators.created()["runapi"] == 2
    ledger.close()


def test_ctrl_c_says_what_is_still_paid_for_and_exits_130(
    emulators: Emulators, tmp_path: Path
) -> None:
    emulators.apps["runapi"].options.latency = LatencyModel("fixed", 30.0)
    config = _emulated_config(emulators, tmp_path)
    config_file = tmp_path / "imagerouter.yaml"
    config_file.write_text(yaml.safe_dump(config))
    db = Path(config["ledger"]["path"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = [sys.executable, "-c", "import sys; from imagerouter.cli import cli; sys.exit(cli())",
            "generate", "two foxes", "-n", "2", "--config", str(config_file)]
    process = _run_until_accepted(args, db, env)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    text = stderr.decode()
    assert process.returncode == 130, text
    assert "Traceback" not in text and "Aborted" not in text
    ledger = Ledger(db)
    [row] = ledger.history()
    assert row.status == "interrupted" and row.cost_usd == Decimal("0.12")
    assert row.request_id in text and "imagerouter resume" in text
    for task in ledger.request_detail(row.request_id)["tasks"]:
        assert task["provider_task_id"] in text
    ledger.close()


# -- numbering -----------------------------------------------------------------------------


def test_images_are_numbered_1_to_n_in_order_across_failed_tasks_and_failover(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    # 5 RunAPI tasks (one image each); the 2nd and 4th creates fail after acceptance, so
    # the attempt delivers 3 and the next attempt makes the other 2.
    emulators.apps["runapi"].options.faults.add("create:seq=ok,task_failed,ok,task_failed,ok")
    router = make_router()
    result = router.generate("five foxes", n=5)
    names = [image.path.name for image in result.images]
    assert names == [f"{result.request_id}-{k}.png" for k in range(1, 6)]
    assert all(image.path.exists() for image in result.images)
    assert router.ledger is not None
    on_record = sorted(
        Path(i["path"]).name for i in router.ledger.request_detail(result.request_id)["images"]
    )
    assert on_record == sorted(names)


def test_a_single_image_served_after_a_failover_is_number_1(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    emulators.apps["runapi"].options.faults.add("create:task_failed@1")
    router = make_router()
    result = router.generate("a red fox")
    assert result.provider == "runflow"
    assert [image.path.name for image in result.images] == [f"{result.request_id}-1.png"]


# -- migration -----------------------------------------------------------------------------


def test_an_old_ledger_upgrades_and_its_unknown_runflow_task_is_still_reconciled(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    # A ledger written before m003: no spec_json, no owner_pid, no reservation attempt_id.
    runflow = emulators.apps["runflow"]
    runflow.options.faults.add("create:reset_after_send@1;find:500@1")
    scratch = make_router({"ledger": {"path": str(tmp_path / "scratch.db")}})
    with pytest.raises(ProviderError):
        scratch.generate("old", model="gpt-image-1.5", quality="medium")
    runflow.options.faults.clear()
    [task] = _tasks(scratch, _request_id_of(scratch))
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    import imagerouter.migrations as migrations

    saved = list(MIGRATIONS)
    migrations.MIGRATIONS[:] = saved[:2]
    try:
        migrate(conn, now="2026-01-01T00:00:00.000000+00:00")
    finally:
        migrations.MIGRATIONS[:] = saved
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    conn.execute(
        "INSERT INTO requests (id, created_at, updated_at, status, operation, model, prompt,"
        " request_json, output_dir) VALUES ('ir-old', ?, ?, 'failed', 'generate',"
        " 'gpt-image-1.5', 'old', '{}', ?)",
        (now, now, str(tmp_path / "out")),
    )
    conn.execute(
        "INSERT INTO attempts (id, request_id, attempt_no, provider, model, operation,"
        " params_json, created_at) VALUES ('ir-old-a1', 'ir-old', 1, 'runflow',"
        " 'gpt-image-1.5', 'generate', '{}', ?)",
        (now,),
    )
    conn.execute(
        "INSERT INTO tasks (id, attempt_id, request_id, provider, model, operation,"
        " idempotency_key, num_images, quoted_usd, state, possibly_billed, created_at,"
        " updated_at) VALUES (?, 'ir-old-a1', 'ir-old', 'runflow', 'gpt-image-1.5',"
        " 'generate', ?, 1, '0.034', 'unknown', 1, ?, ?)",
        (task["id"], task["idempotency_key"], now, now),
    )
    conn.close()
    router = make_router(ledger=Ledger(old))  # opens (and upgrades) the old file
    deadline = time.monotonic() + 10
    while (outcomes := router.resume()) and outcomes[0].state != "collected":
        assert time.monotonic() < deadline, outcomes
        time.sleep(0.05)
    assert [o.state for o in outcomes] == ["collected"]
    assert emulators.created()["runflow"] == 1


def test_a_lost_runapi_create_of_a_request_served_elsewhere_is_never_replayed(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    # No send arrives; the config opts in to failing over an unknown outcome.
    emulators.apps["runapi"].options.faults.add("create:500@1")
    router = make_router({"routing": {"on_unknown_submission": "failover"}})
    result = router.generate("a red fox")
    assert result.provider == "runflow"
    emulators.apps["runapi"].options.faults.clear()
    [outcome] = router.resume()
    # A replay now would be the task's first creation: a charge nobody needs.
    assert outcome.state == "unknown" and "served by another backend" in outcome.detail
    assert emulators.created() == {"runapi": 0, "runflow": 1}


def test_the_gateway_runs_the_sweeper_on_its_router(
    make_router: MakeRouter, emulators: Emulators, plugins: Any
) -> None:
    from starlette.testclient import TestClient

    from imagerouter.gateway import create_app
    from imagerouter.resume import SWEEP_INTERVAL_S

    runflow = emulators.apps["runflow"]
    runflow.options.latency = LatencyModel("fixed", 0.0)
    runflow.options.faults.add("create:reset_after_send@1;find:500@1")
    waits: list[float] = []

    async def short(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0.01)  # never the sweeper's 60 s

    router = make_router(sleep=short)
    with pytest.raises(ProviderError):
        router.generate("swept by the gateway", model="gpt-image-1.5", quality="medium")
    request_id = _request_id_of(router)
    runflow.options.faults.clear()
    assert router.ledger is not None
    path = router.ledger.path
    # TestClient runs the app's lifespan (which starts and stops the sweeper).
    with TestClient(create_app(router.config, plugins=plugins, router=router)):
        deadline = time.monotonic() + 20
        while True:
            with Ledger(path) as ledger:
                [task] = ledger.request_detail(request_id)["tasks"]
            if task["state"] == "collected":
                break
            assert time.monotonic() < deadline, task["state"]
            time.sleep(0.05)
    assert SWEEP_INTERVAL_S in waits
    assert emulators.created()["runflow"] == 1


def test_a_task_given_up_after_unreadable_polls_has_no_cycle_in_its_error_chain(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    emulators.apps["runapi"].options.faults.add("poll:malformed@1")
    router = make_router()
    with pytest.raises(ProviderError) as caught:
        router.generate("a red fox")
    seen: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        assert all(error is not earlier for earlier in seen), "the error chain loops"
        seen.append(error)
        error = error.__cause__ or error.__context__
    assert len(seen) < 10

"""Emulated runs keep their own money records, end cleanly when faults never stop, reject bad
fault/latency specs in one line, and make images a person can tell apart (issue 9)."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image, ImageStat

import imagerouter
from imagerouter import (
    BackendStats,
    JobTimedOutError,
    MalformedResponseError,
    Router,
)
from imagerouter.cli import cli
from imagerouter.clock import FakeClock
from imagerouter.config import Config, load_config
from imagerouter.emulated import (
    EMULATED_POLL_DEADLINE_S,
    EMULATED_POLL_INTERVAL,
    Emulators,
    emulated_errors,
)
from imagerouter.emulation import EmulationSpecError, FaultPlan, LatencyModel, render_image
from imagerouter.ledger import Ledger
from imagerouter.paths import default_ledger_path, emulated_ledger_path
from imagerouter.plugins import Plugins
from imagerouter.polling import AdaptiveSchedule, FixedSchedule

from .conftest import deep_merge, fast_sleep

runner = CliRunner()


@pytest.fixture
def running(plugins: Plugins) -> Iterator[Emulators]:
    with Emulators.start(plugins, latency="fixed:0.02", seed=3) as emulators:
        yield emulators


def _config(plugins: Plugins, tmp_path: Path, **extra: Any) -> Config:
    """A fast config; `extra` sections merge in (`providers` per provider)."""
    data: dict[str, Any] = {
        "providers": {
            name: {"poll_interval": 0.01, "timeout": 5} for name in ("runapi", "runflow")
        },
        "output": {"dir": str(tmp_path / "out")},
    }
    data = deep_merge(data, extra)
    return load_config(data, known_providers=plugins.providers())


def _only(provider: str) -> dict[str, Any]:
    other = "runflow" if provider == "runapi" else "runapi"
    return {other: {"enabled": False}}


# -- its own ledger ---------------------------------------------------------------------------


def test_emulated_ledger_path_is_a_twin_of_the_real_one(tmp_path: Path) -> None:
    real = tmp_path / "money" / "ledger.db"
    assert emulated_ledger_path(real) == tmp_path / "money" / "ledger.emulated.db"
    assert emulated_ledger_path(emulated_ledger_path(real)) == emulated_ledger_path(real)
    assert emulated_ledger_path() == default_ledger_path().with_name("ledger.emulated.db")


def test_emulated_runs_never_touch_the_real_ledger_or_budget(
    running: Emulators, plugins: Plugins, tmp_path: Path
) -> None:
    real = tmp_path / "ledger.db"
    config = _config(plugins, tmp_path, ledger={"path": str(real)}, budget={"total_usd": "1"})
    emulated = running.configure(config)
    assert emulated.ledger.path == tmp_path / "ledger.emulated.db"
    router = Router(emulated, plugins=plugins, sleep=fast_sleep)
    try:
        for _ in range(3):
            router.generate("a lighthouse at dusk", n=2)
    finally:
        router.close()

    with Ledger(tmp_path / "ledger.emulated.db") as ledger:
        assert len(ledger.history(limit=10)) == 3
        assert ledger.committed_usd(None) > 0
    # The real ledger was never even created, so its budget is whole.
    assert not real.exists()
    with Ledger(real) as ledger:
        assert ledger.history(limit=10) == []
        assert ledger.committed_usd(None) == Decimal(0)
        assert ledger.uncollected() == []


def test_default_ledger_gets_an_emulated_twin_in_the_home(
    running: Emulators, plugins: Plugins, tmp_path: Path, isolated_home: Path
) -> None:
    emulated = running.configure(_config(plugins, tmp_path))
    assert emulated.ledger.path == isolated_home / "ledger.emulated.db"
    with Router(emulated, plugins=plugins, sleep=fast_sleep) as router:
        router.generate("a cat")
    assert not (isolated_home / "ledger.db").exists()


def test_configure_keeps_what_the_user_set_and_bounds_the_rest(
    running: Emulators, plugins: Plugins, tmp_path: Path
) -> None:
    data = {
        "providers": {"runapi": {"poll_interval": 3, "poll_deadline": 77}},
        "routing": {"resume_on_start": True},
        "ledger": {"enabled": False},
    }
    config = running.configure(load_config(data, known_providers=plugins.providers()))
    runapi, runflow = config.provider_settings("runapi"), config.provider_settings("runflow")
    assert (runapi.poll_interval, runapi.poll_deadline) == (3, 77)
    assert runflow.poll_interval == EMULATED_POLL_INTERVAL
    assert runflow.poll_deadline == EMULATED_POLL_DEADLINE_S
    assert config.routing.resume_on_start is False  # old emulated jobs have no emulator
    assert config.ledger.enabled is False and config.ledger.path is None


def test_jobs_left_unfinished_are_closed_when_the_emulators_stop(
    plugins: Plugins, tmp_path: Path
) -> None:
    stuck = {"runapi": "create:task_stuck"}
    with Emulators.start(plugins, latency="fixed:0.02", faults=stuck) as emu:
        providers = {**_only("runapi"), "runapi": {"poll_deadline": 0.3}}
        ledger = {"path": str(tmp_path / "ledger.db")}
        config = emu.configure(_config(plugins, tmp_path, providers=providers, ledger=ledger))
        router = Router(config, plugins=plugins)
        try:
            with pytest.raises(JobTimedOutError):
                router.generate("never finishes")
        finally:
            router.close()
        with Ledger(tmp_path / "ledger.emulated.db") as ledger:
            assert len(ledger.uncollected()) == 1  # while its emulator runs, it is resumable
    with Ledger(tmp_path / "ledger.emulated.db") as ledger:
        assert ledger.uncollected() == []  # afterwards nothing is left to chase


def test_cli_emulated_runs_leave_spend_history_and_resume_alone(isolated_home: Path) -> None:
    for _ in range(2):
        result = runner.invoke(cli, ["generate", "a lighthouse at dusk", "--emulate", "--json"])
        assert result.exit_code == 0, result.output
    assert (isolated_home / "ledger.emulated.db").exists()
    with Ledger(isolated_home / "ledger.emulated.db") as ledger:
        assert len(ledger.history(limit=10)) == 2

    def run(*args: str) -> Any:
        result = runner.invoke(cli, [*args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert sum(row["requests"] for row in run("spend")["rows"]) == 0
    assert run("history")["requests"] == []
    assert run("resume")["tasks"] == []
    # On purpose, --emulated shows them; resume --emulated contacts nothing, only closes.
    assert sum(row["requests"] for row in run("spend", "--emulated")["rows"]) == 2
    assert len(run("history", "--emulated")["requests"]) == 2
    assert run("resume", "--emulated") == {"tasks": [], "closed_emulated": 0}


# -- faults that end --------------------------------------------------------------------------


def test_unreadable_polls_end_the_request_quickly(
    running: Emulators, plugins: Plugins, tmp_path: Path
) -> None:
    """What `--faults runapi=any:malformed@1` did for 901 s: now a few polls, one error."""
    running.apps["runapi"].options.faults.add("poll:malformed@1")
    config = running.configure(_config(plugins, tmp_path, providers=_only("runapi")))
    clock = FakeClock()
    router = Router(config, plugins=plugins, clock=clock, sleep=clock.sleep)
    try:
        with pytest.raises(MalformedResponseError) as caught:
            router.generate("a lighthouse")
    finally:
        router.close()
    assert caught.value.accepted == "yes" and caught.value.task_id
    from imagerouter.execution import MALFORMED_POLL_ERRORS

    assert running.apps["runapi"].counters.polls == MALFORMED_POLL_ERRORS
    assert running.apps["runapi"].counters.created == 1  # never paid twice
    assert clock.now() - 1000.0 < 60


@pytest.mark.parametrize(
    ("faults", "fragment"),
    [
        ({"runapi": "create:999@1"}, "runapi: fault rule 'create:999@1': unknown fault kind '999'"),
        (
            {"runapi": "download:task_failed@1"},
            "'task_failed' only applies to create, not 'download'",
        ),
        ({"nope": "create:503"}, "no provider is called 'nope'; known: openai, runapi, runflow"),
    ],
)
def test_bad_fault_specs_are_one_clear_error_before_anything_starts(
    plugins: Plugins, faults: dict[str, str], fragment: str
) -> None:
    with pytest.raises(EmulationSpecError) as caught, Emulators.start(plugins, faults=faults):
        pytest.fail("no emulator may start with a bad spec")
    assert fragment in str(caught.value)
    assert caught.value.field == "faults"
    assert "\n" not in str(caught.value)


def test_bad_latency_is_one_clear_error() -> None:
    with pytest.raises(EmulationSpecError, match=r"latency: 'bogus': expected numbers"):
        LatencyModel.parse("bogus")
    with pytest.raises(EmulationSpecError, match="unknown fault kind"):
        FaultPlan.parse("create:999@1")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["generate", "x", "--emulate", "--faults", "runapi=create:999@1"], "'999'"),
        (["generate", "x", "--emulate", "--faults", "runapi=download:task_failed@1"], "only"),
        (["emulate", "--latency", "bogus"], "'bogus'"),
    ],
)
def test_cli_bad_specs_exit_2_without_a_traceback(args: list[str], fragment: str) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, ValueError)


def test_emulate_prints_export_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = time.sleep

    def interrupt(seconds: float) -> None:
        if seconds >= 60:  # the command's wait for Ctrl-C; the servers' start-up waits pass
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", interrupt)
    result = runner.invoke(cli, ["emulate", "--api-key", "k1"])
    assert result.exit_code == 0, result.output
    exports = [line for line in result.output.splitlines() if line.startswith("export ")]
    names = {line.split()[1].split("=")[0] for line in exports}
    assert names == {
        "RUNAPI_BASE_URL", "RUNAPI_API_KEY", "RUNFLOW_BASE_URL", "RUNFLOW_API_KEY",
        "OPENAI_BASE_URL", "OPENAI_API_KEY",
    }
    assert "export RUNAPI_API_KEY=k1" in exports
    for line in result.output.splitlines():
        assert line.startswith(("export ", "#")), line  # nothing a shell would choke on


# -- images a person can use ------------------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("provider", ["runapi", "runflow"])
def test_every_emulated_image_is_distinct(
    running: Emulators, plugins: Plugins, tmp_path: Path, provider: str
) -> None:
    config = running.configure(_config(plugins, tmp_path, providers=_only(provider)))
    with Router(config, plugins=plugins, sleep=fast_sleep) as router:
        result = router.generate("a lighthouse at dusk", n=10, size="1024x1024")
    assert result.provider == provider
    assert len({_sha(image.path) for image in result.images}) == 10


def test_same_seed_different_index_never_collides() -> None:
    images = {render_image("same", 64, 64, "png", seed=seed) for seed in range(200)}
    assert len(images) == 200


def _mean_rgb(path: Path) -> tuple[float, ...]:
    with Image.open(path) as image:
        return tuple(ImageStat.Stat(image.convert("RGB")).mean)


@pytest.mark.parametrize("provider", ["runapi", "runflow"])
def test_an_emulated_edit_derives_from_its_input(
    running: Emulators, plugins: Plugins, tmp_path: Path, provider: str
) -> None:
    config = running.configure(_config(plugins, tmp_path, providers=_only(provider)))
    means = {}
    with Router(config, plugins=plugins, sleep=fast_sleep) as router:
        for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            source = tmp_path / f"{name}.png"
            Image.new("RGB", (96, 64), colour).save(source)
            result = router.edit("make the sky purple", [source])
            assert result.provider == provider
            means[name] = _mean_rgb(result.images[0].path)
    red, blue = means["red"], means["blue"]
    assert red[0] > red[2] + 60  # the red input shows through
    assert blue[2] > blue[0] + 60  # and so does the blue one


def test_an_unreadable_source_falls_back_to_the_gradient() -> None:
    assert render_image("x", 32, 32, "png", source=b"not an image") == render_image(
        "x", 32, 32, "png"
    )
    red = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(red, "PNG")
    assert render_image("x", 32, 32, "png", source=red.getvalue()) != render_image(
        "x", 32, 32, "png"
    )


# -- docs that are true -----------------------------------------------------------------------


def test_health_snapshot_items_name_their_backend(plugins: Plugins) -> None:
    router = Router(load_config(None, known_providers=plugins.providers()), plugins=plugins,
                    ledger=False)
    snapshot = router.health_snapshot()
    assert "BackendStats" in imagerouter.__all__
    assert snapshot and all(isinstance(item, BackendStats) for item in snapshot)
    assert {item.provider for item in snapshot} == {"runapi", "runflow"}  # openai: no key
    first = snapshot[0]
    assert (first.provider, first.model, first.operation) == first.key


def test_poll_interval_unset_means_adaptive_and_config_check_says_so(plugins: Plugins) -> None:
    config = load_config(None, known_providers=plugins.providers())
    assert config.provider_settings("runapi").poll_interval is None
    result = runner.invoke(cli, ["config", "check", "--json"])
    assert result.exit_code == 0, result.output
    assert '"poll_interval": 2' not in result.output
    router = Router(config, plugins=plugins, ledger=False)
    offer = next(o for o in router.quote("x") if o.eligible)
    assert isinstance(router.schedule_for(offer), AdaptiveSchedule)
    fixed = load_config(
        {"providers": {"runapi": {"poll_interval": 2}, "runflow": {"poll_interval": 2}}},
        known_providers=plugins.providers(),
    )
    assert isinstance(Router(fixed, plugins=plugins, ledger=False).schedule_for(offer),
                      FixedSchedule)


def test_an_emulated_timeout_does_not_advise_a_resume(tmp_path: Path) -> None:
    config = tmp_path / "fast.yaml"
    config.write_text(
        "providers:\n  runapi: {poll_deadline: 0.5}\n  runflow: {poll_deadline: 0.5}\n",
        encoding="utf-8",
    )
    stuck = ["--faults", "runapi=create:task_stuck", "--faults", "runflow=create:task_stuck"]
    result = runner.invoke(
        cli, ["generate", "a lighthouse", "--emulate", *stuck, "--config", str(config)]
    )
    assert result.exit_code != 0
    assert "JobTimedOutError" in result.output
    assert "nothing to resume" in result.output
    assert "imagerouter resume" not in result.output


def test_emulated_errors_rewrites_only_the_resume_advice() -> None:
    advice = "it may still finish and be billed: `imagerouter resume` will collect it"
    with pytest.raises(JobTimedOutError) as caught, emulated_errors():
        raise JobTimedOutError(f"still running after 1 s; {advice}", provider="runapi")
    assert "imagerouter resume" not in str(caught.value)
    assert str(caught.value).startswith("runapi: still running after 1 s; it was emulated")
    with pytest.raises(JobTimedOutError) as real, emulated_errors(False):
        raise JobTimedOutError(f"still running; {advice}", provider="runapi")
    assert "`imagerouter resume` will collect it" in str(real.value)

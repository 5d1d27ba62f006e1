"""Every command fed garbage: exit 2, exactly one line on stderr (or one JSON object with
--json), and never a traceback. Nothing here reaches a paid call: all of it is refused first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagerouter.cli import cli

BAD_CONFIG = (
    "tiers:\n  draft:\n    - provider: runflow\n      model: gpt-image-2\n      quality: x\n"
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_CONFIG)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {
        "BAD": str(bad),
        "MISSING": str(tmp_path / "missing.yaml"),
        "DIR": str(tmp_path),
        "FILE": str(a_file),
        "NOPNG": str(tmp_path / "nope.png"),
    }


# One or more bad values for every command and option. {NAME} is filled from `files`.
GARBAGE: list[list[str]] = [
    # the group
    ["no-such-command"],
    ["--no-such-option"],
    # quote and the request options it shares with generate/edit
    ["quote", "x", "-n", "11"],
    ["quote", "x", "-n", "abc"],
    ["quote", "x", "--model", "gpt-9"],
    ["quote", "x", "--quality", "ultra"],
    ["quote", "x", "--size", "12"],
    ["quote", "x", "--aspect-ratio", "wide"],
    ["quote", "x", "--resolution", "9k"],
    ["quote", "x", "--format", "gif"],
    ["quote", "x", "--background", "pink"],
    ["quote", "x", "--tier", "nope"],
    ["quote", "x", "--provider", "nope"],
    ["quote", "x", "--max-cost", "abc"],
    ["quote", "x", "--max-cost", "-1"],
    ["quote", "x", "--edit-images", "0"],
    ["quote", "x", "--mask"],  # a mask without --edit-images would be silently ignored
    ["quote", "x", "--config", "{MISSING}"],
    ["quote", "x", "--config", "{BAD}"],
    ["quote", "x", "--config", "{DIR}"],
    # generate
    ["generate"],
    ["generate", "x", "-n", "0", "--emulate"],
    ["generate", "x", "--provider", "nope", "--emulate"],
    ["generate", "x", "--faults", "runapi=create:503@1"],  # --faults without --emulate
    ["generate", "x", "--emulate", "--faults", "runapi=create:999@1"],
    ["generate", "x", "--emulate", "--faults", "runapi=download:task_failed@1"],
    ["generate", "x", "--emulate", "--faults", "nope=create:503@1"],
    ["generate", "x", "--emulate", "--faults", "garbage"],
    ["generate", "x", "--emulate", "-o", "{FILE}"],
    ["generate", "x", "--config", "{BAD}"],
    ["generate", "x"],  # no keys: the missing key is bad config, nothing is sent
    # edit
    ["edit", "--prompt", "x"],
    ["edit", "{NOPNG}", "--emulate"],
    ["edit", "{NOPNG}", "--prompt", "x", "--emulate"],
    ["edit", "{FILE}", "--prompt", "x", "--emulate"],  # not an image
    ["edit", "{FILE}", "--prompt", "x", "--faults", "runflow=create:429@1"],
    # emulate (every one of these must fail before any server starts)
    ["emulate", "--latency", "bogus"],
    ["emulate", "--port", "99999"],
    ["emulate", "--provider", "nope"],
    ["emulate", "--faults", "runapi=create:999@1"],
    ["emulate", "--faults", "nope=create:503@1"],
    ["emulate", "--api-key", ""],
    # prices / providers / config check
    ["prices", "--config", "{BAD}"],
    ["providers", "--bogus"],
    ["config", "check", "{MISSING}"],
    ["config", "check", "{BAD}"],
    ["config", "check", "{BAD}", "--config", "{MISSING}"],
    ["config", "nope"],
    # serve (never starts: every value is refused before binding)
    ["serve", "--port", "99999"],
    ["serve", "--faults", "runapi=create:503@1"],
    ["serve", "--emulate", "--faults", "runapi=create:999@1"],
    ["serve", "--host", "0.0.0.0"],
    ["serve", "--config", "{BAD}"],
    # spend / history / resume / health
    ["spend", "--since", "bogus"],
    ["spend", "--since", "99999999999999d"],
    ["spend", "--by", "colour"],
    ["spend", "--config", "{MISSING}"],
    ["history", "--id", "bogus"],
    ["history", "--limit", "0"],
    ["history", "--limit", "x"],
    ["resume", "--config", "{BAD}"],
    ["resume", "--bogus"],
    ["health", "--config", "{MISSING}"],
    ["health", "--check", "--config", "{BAD}"],
]


def _fill(args: list[str], files: dict[str, str]) -> list[str]:
    return [arg.format(**files) for arg in args]


def _ids(args: list[str]) -> str:
    return " ".join(args)


@pytest.mark.parametrize("args", GARBAGE, ids=_ids)
def test_garbage_is_one_line_and_exit_2(args: list[str], files: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, _fill(args, files))
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 5
    assert result.stdout == ""


# Commands that print take --json; their bad input is then one JSON object on stdout.
JSON_GARBAGE = [
    args
    for args in GARBAGE
    if args[0] in ("quote", "generate", "edit", "prices", "spend", "history", "resume", "health")
]


@pytest.mark.parametrize("args", JSON_GARBAGE, ids=_ids)
def test_garbage_with_json_is_one_json_error(args: list[str], files: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, [*_fill(args, files), "--json"])
    assert result.exit_code == 2, result.output
    assert result.stderr == ""
    error = json.loads(result.stdout)["error"]
    assert set(error) == {"type", "message"}
    assert error["type"] and error["message"] and "\n" not in error["message"]


def test_a_provider_failure_with_json_is_json_and_exit_1(tmp_path: Path) -> None:
    # Both providers refuse the request (422): no failover to pay again, exit 1.
    result = CliRunner().invoke(
        cli,
        ["generate", "x", "--emulate", "-o", str(tmp_path), "--json",
         "--faults", "runapi=create:422@1", "--faults", "runflow=create:422@1"],
    )
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "InvalidRequestError" and "422" in error["message"]


def test_specific_messages_name_the_problem(files: dict[str, str]) -> None:
    def stderr(*args: str) -> str:
        return CliRunner().invoke(cli, list(args)).stderr

    assert "no request 'bogus' in the ledger" in stderr("history", "--id", "bogus")
    assert "--emulate" in stderr("generate", "x", "--faults", "runapi=create:503@1")
    assert "unknown fault kind '999'" in stderr(
        "generate", "x", "--emulate", "--faults", "runapi=create:999@1"
    )
    assert "only applies to create" in stderr(
        "generate", "x", "--emulate", "--faults", "runapi=download:task_failed@1"
    )
    message = stderr("generate", "x", "--emulate", "--faults", "nope=create:503@1")
    assert "no provider 'nope'" in message and "runapi" in message
    assert "latency" in stderr("emulate", "--latency", "bogus")


def _subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from imagerouter.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ["history", "--id", "bogus"],
        ["generate", "x", "--emulate", "--faults", "runapi=create:999@1"],
        ["emulate", "--latency", "bogus"],
    ],
    ids=_ids,
)
def test_the_real_entry_point_prints_no_traceback(args: list[str]) -> None:
    done = _subprocess(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: ")


def test_a_bug_is_still_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagerouter.router import Router

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(Router, "quote", broken)
    result = CliRunner().invoke(cli, ["quote", "x"])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert "RuntimeError: something nobody expected" in line and "Traceback" not in line
    result = CliRunner().invoke(cli, ["quote", "x", "--json"])
    assert json.loads(result.stdout)["error"]["type"] == "RuntimeError"


def test_an_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagerouter.ledger import Ledger

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Ledger, "spend", interrupted)
    result = CliRunner().invoke(cli, ["spend", "--json"])
    assert result.exit_code == 130
    assert json.loads(result.stdout)["error"]["type"] == "Interrupted"


@pytest.mark.parametrize("args", [[], ["config"]], ids=["imagerouter", "config"])
def test_a_group_alone_prints_its_help(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: ") and "Commands:" in result.stdout

"""Every snippet in README.md and docs/ runs as written (issue 9).

- ```python blocks run in a fresh interpreter, in a directory holding the files the docs name
  (photo.png, mask.png, team.yaml, gateway.yaml), with the provider variables pointing at the
  emulators (RUNAPI_BASE_URL, RUNAPI_API_KEY, ...), exactly as a user with keys would run them.
  A block that talks to `imagerouter serve` on http://127.0.0.1:8000 gets a gateway on the
  emulators at a free port instead (the only change made to a block's text).
- ```yaml blocks load as configs.
- ```bash and ```console blocks: every `imagerouter` command parses (options, choices and
  arguments are checked as the CLI checks them); `generate`/`edit` with `--emulate` really run.
  Other programs must be ones we know (`curl`, `pytest`, ...).
- A block that cannot run says why on the line before its fence: `<!-- not run: REASON -->`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from imagerouter.cli import cli
from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.emulation import EmulatorServer
from imagerouter.gateway import create_app
from imagerouter.plugins import Plugins

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.*?)\s*-->$")
_GATEWAY = "http://127.0.0.1:8000"
# Programs a bash block may call besides imagerouter; their lines are not checked here.
_OTHER_PROGRAMS = {"bash", "curl", "export", "mypy", "openssl", "pip", "pytest", "ruff"}
_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence
    lang: str
    text: str
    not_run: str | None  # the reason, when marked

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks() -> list[Block]:
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").split("\n")
        index = 0
        while index < len(lines):
            line = lines[index]
            if not line.startswith("```"):
                index += 1
                continue
            start = index
            end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
            before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
            marker = _NOT_RUN.match(before.strip())
            found.append(
                Block(
                    page,
                    start + 1,
                    line[3:].strip(),
                    "\n".join(lines[start + 1 : end]),
                    marker.group("reason") if marker else None,
                )
            )
            index = end + 1
    return found


BLOCKS = _blocks()


def _of(*langs: str) -> list[Any]:
    return [
        pytest.param(block, id=block.name)
        for block in BLOCKS
        if block.lang in langs and block.not_run is None
    ]


def test_every_skipped_block_says_why() -> None:
    marked = [block for block in BLOCKS if block.not_run is not None]
    assert marked, "the plugin guide's fragments at least are marked"
    for block in marked:
        assert len(block.not_run or "") >= 10, f"{block.name}: give a real reason"
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").split("\n"), 1):
            if "not run" in line and line.strip().startswith("<!--"):
                assert _NOT_RUN.match(line.strip()), f"{page.name}:{number}: malformed marker"


def test_there_are_snippets_to_run() -> None:
    names = {block.name for block in BLOCKS if block.not_run is None}
    assert "README.md:3" in names
    assert sum(1 for p in _of("python")) >= 8


# -- the world the snippets run in ------------------------------------------------------------


@dataclass
class World:
    directory: Path
    env: dict[str, str]
    gateway_url: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    plugins = Plugins.load()
    directory = tmp_path_factory.mktemp("snippets")
    Image.new("RGB", (96, 64), (40, 120, 200)).save(directory / "photo.png")
    Image.new("RGBA", (96, 64), (0, 0, 0, 0)).save(directory / "mask.png")
    (directory / "team.yaml").write_text("routing:\n  strategy: priority\n", encoding="utf-8")
    gateway_yaml = next(
        b.text for b in BLOCKS if b.lang == "yaml" and b.text.startswith("# gateway.yaml")
    )
    (directory / "gateway.yaml").write_text(gateway_yaml, encoding="utf-8")
    with Emulators.start(plugins, latency="fixed:0.02", seed=11) as emulators:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RUNAPI_", "RUNFLOW_", "IMAGEROUTER_", "OPENAI_"))
        }
        for name, provider in plugins.providers().items():
            env[provider.base_url_env_var] = emulators.url(name)
            env[provider.key_env_var] = emulators.keys[name]
        env["IMAGEROUTER_HOME"] = str(directory / "home")
        env["IMAGEROUTER_GATEWAY_KEY"] = "snippet-gateway-key"
        gateway_config = emulators.configure(
            load_config(
                {"ledger": {"path": str(directory / "gateway-ledger.db")}},
                known_providers=plugins.providers(),
            )
        )
        app = create_app(gateway_config, plugins=plugins)
        server = EmulatorServer(app).start()
        try:
            yield World(directory, env, server.url)
        finally:
            server.stop()
            app.state.gateway.close()


# -- python -----------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _of("python"))
def test_python_snippet_runs(block: Block, world: World) -> None:
    code = block.text.replace(_GATEWAY, world.gateway_url)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=world.directory,
        env=world.env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, f"{block.name} failed:\n{done.stderr[-3000:]}"


# -- yaml -------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _of("yaml"))
def test_yaml_snippet_is_a_valid_config(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEROUTER_GATEWAY_KEY", "snippet-gateway-key")
    monkeypatch.setenv("TEAM_A_KEY", "snippet-team-a-key")  # gateway.md, per-key limits
    monkeypatch.setenv("RUNAPI_API_KEY", "snippet-runapi-key")
    path = tmp_path / "snippet.yaml"
    path.write_text(block.text, encoding="utf-8")
    assert isinstance(yaml.safe_load(block.text), dict)
    load_config(path, known_providers=Plugins.load().providers())


# -- bash / console ---------------------------------------------------------------------------


def _commands(block: Block) -> list[list[str]]:
    """The simple commands of a shell block (console: only the `$ ` lines)."""
    text = block.text.replace("\\\n", " ")
    lines = text.split("\n")
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands: list[list[str]] = []
    for line in lines:
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";", "|"):
                while current and _ASSIGNMENT.match(current[0]):
                    current.pop(0)
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


def _parse(args: list[str]) -> click.Context:
    """Parse like the CLI does (types, choices, required arguments), without running."""
    ctx = cli.make_context("imagerouter", list(args))
    command: click.Command = cli
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, found, rest = command.resolve_command(ctx, rest)
        assert found is not None and name is not None, f"unknown command in {args}"
        ctx = found.make_context(name, rest, parent=ctx)
        command = found
    return ctx


@pytest.mark.parametrize("block", _of("bash", "console"))
def test_shell_snippet_commands_parse(block: Block, world: World) -> None:
    commands = _commands(block)
    assert commands, f"{block.name}: no command found"
    for command in commands:
        program, args = command[0], command[1:]
        if program != "imagerouter":
            assert program in _OTHER_PROGRAMS, f"{block.name}: unknown program {program!r}"
            continue
        try:
            _parse(args)
        except click.ClickException as exc:
            pytest.fail(f"{block.name}: `imagerouter {shlex.join(args)}`: {exc.format_message()}")


def _emulated_runs() -> list[Any]:
    runs = []
    for block in BLOCKS:
        if block.lang not in ("bash", "console") or block.not_run is not None:
            continue
        for command in _commands(block):
            paid = command[0] == "imagerouter" and command[1:2] in (["generate"], ["edit"])
            if paid and "--emulate" in command:
                runs.append(pytest.param(command[1:], id=f"{block.name}:{command[1]}"))
    return runs


@pytest.mark.parametrize("args", _emulated_runs())
def test_emulated_commands_in_the_docs_run(
    args: list[str], world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(world.directory)
    for key in ("RUNAPI_API_KEY", "RUNFLOW_API_KEY", "RUNAPI_BASE_URL", "RUNFLOW_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("IMAGEROUTER_HOME", world.env["IMAGEROUTER_HOME"])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "nothing was charged" in result.output


def test_the_readme_quote_table_is_what_quote_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    block = next(b for b in BLOCKS if b.page.name == "README.md" and b.lang == "console")
    lines = block.text.split("\n")
    assert lines[0].startswith("$ imagerouter quote")
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(cli, shlex.split(lines[0][2:])[1:])
    assert result.exit_code == 0, result.output

    def shown(text: str) -> list[str]:
        return [line.rstrip() for line in text.rstrip().split("\n")]

    assert shown("\n".join(lines[1:])) == shown(result.output)

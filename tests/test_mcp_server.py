"""`imagerouter mcp` driven by the `mcp` SDK's own client over stdio, against the emulators.

The server runs as a real subprocess (`imagerouter mcp --config ...`) whose config points at
the test's emulators on loopback, so the paid creates are counted where they land and a
cancelled job can be collected afterwards by `imagerouter resume`.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from mcp import Client, StdioServerParameters
from mcp_types import CallToolResult, Implementation

from imagerouter.cli.main import cli
from imagerouter.emulated import Emulators
from imagerouter.emulation import LatencyModel

from .conftest import base_config, deep_merge

CLIENT = Implementation(name="test agent", version="1.0")
_WAIT_S = 60.0  # an upper bound for the loops below; they end as soon as the state shows


def _write_config(tmp_path: Path, emulators: Emulators, extra: dict[str, Any]) -> Path:
    config = base_config(tmp_path)
    for name in emulators.servers:  # every installed provider, on its emulator
        config["providers"].setdefault(name, {}).update(
            base_url=emulators.url(name), api_key=emulators.keys[name]
        )
    path = tmp_path / "imagerouter.json"  # JSON is YAML
    path.write_text(json.dumps(deep_merge(config, extra)))
    path.chmod(0o600)  # it holds the emulators' keys
    return path


@asynccontextmanager
async def _serve(config: Path, home: Path) -> AsyncIterator[Client]:
    command = str(Path(sys.executable).with_name("imagerouter"))
    env = {"IMAGEROUTER_HOME": str(home), "PATH": os.environ.get("PATH", "")}
    params = StdioServerParameters(command=command, args=["mcp", "--config", str(config)], env=env)
    async with Client(params, client_info=CLIENT) as client:
        yield client


def _text(result: CallToolResult) -> str:
    first = result.content[0]
    assert first.type == "text"
    return first.text


def _data(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, _text(result)
    data: dict[str, Any] = json.loads(_text(result))
    return data


def _cli_error(*args: str) -> str:
    """The line the CLI prints for the same mistake, without its `error: ` (run it in a
    thread: the CLI's sync calls refuse to run inside the test's event loop)."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    return line.removeprefix("error: ")


def _is_file(path: str) -> bool:
    return Path(path).is_file()


def _statuses(db: Path) -> list[str]:
    """The requests' statuses, read while the server may be writing (a busy file: none yet)."""
    try:
        return [status for _, status, _ in _requests(db)]
    except sqlite3.OperationalError:
        return []


def _requests(db: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, status, mcp_client FROM requests ORDER BY created_at")
        return [(str(a), str(b), c) for a, b, c in rows]


async def test_tools_quote_generate_edit_and_spend_over_stdio(
    emulators: Emulators, tmp_path: Path, isolated_home: Path, input_png: Path
) -> None:
    config = _write_config(tmp_path, emulators, {})
    out = tmp_path / "agent-out"
    notes: list[str] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        notes.append(message or "")

    async with _serve(config, isolated_home) as client:
        listed = await client.list_tools()
        tools = {tool.name: tool for tool in listed.tools}
        assert set(tools) == {"quote", "generate", "edit", "spend", "providers"}
        assert tools["edit"].input_schema["required"] == ["prompt", "images"]
        assert tools["generate"].input_schema["properties"]["quality"]["enum"] == [
            "low",
            "medium",
            "high",
        ]

        quote = _data(await client.call_tool("quote", {"prompt": "a fox", "n": 2}))
        assert quote["offers"] and quote["offers"][0]["eligible"]
        assert sum(emulators.created().values()) == 0

        made = await client.call_tool(
            "generate",
            {"prompt": "a lighthouse", "providers": ["runapi"], "output_dir": str(out)},
            progress_callback=progress,
        )
        result = _data(made)
        [image] = result["images"]
        assert _is_file(image["path"]) and Path(image["path"]).parent == out
        assert result["provider"] == "runapi" and Decimal(result["cost_usd"]) > 0
        assert [block.type for block in made.content] == ["text", "image"]
        assert made.structured_content is not None
        assert made.structured_content["request_id"] == result["request_id"]
        assert notes and notes[-1].startswith("runapi")  # progress while it polled

        edited = _data(
            await client.call_tool(
                "edit",
                {"prompt": "make it purple", "images": [str(input_png)], "output_dir": str(out)},
            )
        )
        assert edited["operation"] == "edit" and _is_file(edited["images"][0]["path"])

        spend = _data(await client.call_tool("spend", {}))
        spent = Decimal(result["cost_usd"]) + Decimal(edited["cost_usd"])
        assert Decimal(spend["today_usd"]) == spent
        assert Decimal(spend["budgets"]["mcp"]["daily_usd"]["committed"]) == spent
        assert spend["client"] == "test-agent"

        # A retry with the same idempotency key is answered, not paid for again.
        keyed = {"prompt": "a retried fox", "providers": ["runapi"], "idempotency_key": "k-1"}
        created = emulators.created()["runapi"]
        once = _data(await client.call_tool("generate", keyed))
        again = _data(await client.call_tool("generate", keyed))
        assert again["request_id"] == once["request_id"]
        assert emulators.created()["runapi"] == created + 1

        providers = _data(await client.call_tool("providers", {}))
        assert {p["name"] for p in providers["providers"]} >= {"runapi", "runflow"}

        # A bad argument: a tool error with the CLI's own words, and nothing sent.
        before = emulators.created()
        for arguments, cli_args in (
            ({"prompt": "x", "size": "huge"}, ["generate", "x", "--size", "huge"]),
            ({"prompt": "x", "n": 11}, ["generate", "x", "-n", "11"]),
            ({"prompt": "x", "providers": ["nope"]}, ["generate", "x", "--provider", "nope"]),
        ):
            refused = await client.call_tool("generate", arguments)
            assert refused.is_error
            said = await anyio.to_thread.run_sync(_cli_error, *cli_args, "--config", str(config))
            assert _text(refused) == said
        unknown = await client.call_tool("generate", {"prompt": "x", "colour": "red"})
        assert unknown.is_error and "colour: is not a request field" in _text(unknown)
        assert emulators.created() == before

    # Every call is in the ledger, tagged with the client's name.
    rows = _requests(tmp_path / "ledger.db")
    assert [(status, client) for _, status, client in rows] == [("served", "test-agent")] * 3


async def test_the_per_server_budget_and_per_call_cap_refuse_before_any_paid_create(
    emulators: Emulators, tmp_path: Path, isolated_home: Path
) -> None:
    # Room for one runapi image ($0.06) today, not two; each call at most $0.10.
    config = _write_config(
        tmp_path, emulators, {"mcp": {"daily_usd": "0.1", "max_cost_usd": "0.1"}}
    )
    async with _serve(config, isolated_home) as client:
        first = await client.call_tool("generate", {"prompt": "one", "providers": ["runapi"]})
        _data(first)
        assert emulators.created()["runapi"] == 1

        second = await client.call_tool("generate", {"prompt": "two", "providers": ["runapi"]})
        assert second.is_error
        assert _text(second).startswith("BudgetExceededError: mcp.daily_usd:")
        assert "every MCP call together" in _text(second)

        capped = await client.call_tool(
            "generate", {"prompt": "many", "providers": ["runapi"], "n": 4}
        )
        assert capped.is_error
        assert _text(capped).startswith("mcp.max_cost_usd: the request costs at least")

        spend = _data(await client.call_tool("spend", {}))
        assert spend["budgets"]["mcp"]["daily_usd"]["limit"] == "0.1"
        assert spend["per_call_cap_usd"] == "0.1"
    assert sum(emulators.created().values()) == 1  # the refused calls created nothing


async def test_a_cancelled_generate_is_collected_by_resume(
    emulators: Emulators, tmp_path: Path, isolated_home: Path
) -> None:
    runapi = emulators.apps["runapi"]
    runapi.options.latency = LatencyModel("fixed", 600.0)  # it runs until the test ends it
    config = _write_config(tmp_path, emulators, {})
    db = tmp_path / "ledger.db"
    async with _serve(config, isolated_home) as client:
        accepted = anyio.Event()

        async def progress(value: float, total: float | None, message: str | None) -> None:
            accepted.set()  # the first note comes once the provider accepted the task

        async with anyio.create_task_group() as group:

            async def call() -> None:
                await client.call_tool(
                    "generate",
                    {"prompt": "a slow fox", "providers": ["runapi"]},
                    progress_callback=progress,
                )

            group.start_soon(call)
            with anyio.fail_after(_WAIT_S):
                await accepted.wait()
            group.cancel_scope.cancel()  # the agent gives up: the SDK sends the cancellation

        with anyio.fail_after(_WAIT_S):
            while True:  # the server records the interruption as it cancels the job
                if _statuses(db) == ["interrupted"]:
                    break
                await anyio.sleep(0.02)
        assert emulators.created()["runapi"] == 1, emulators.created()

    # The job finishes at the provider; `imagerouter resume` collects its image.
    for job in runapi.app.state.emulator.book.all():
        job.duration = 0.0
    resume = ["resume", "--config", str(config), "--json"]
    result = await anyio.to_thread.run_sync(CliRunner().invoke, cli, resume)
    assert result.exit_code == 0, result.output
    [task] = json.loads(result.stdout)["tasks"]
    assert task["state"] == "collected" and task["images"], task
    assert all(_is_file(path) for path in task["images"])
    assert emulators.created()["runapi"] == 1  # collected, never created again
    [(_, _, client_name)] = _requests(db)
    assert client_name == "test-agent"


@pytest.mark.parametrize(
    "argv", [["mcp", "--host", "0.0.0.0"], ["mcp", "--http", "--host", "0.0.0.0"]]
)
def test_mcp_refuses_bad_listening_options_with_exit_2(argv: list[str]) -> None:
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_streamable_http_serves_the_same_tools(
    emulators: Emulators, tmp_path: Path, isolated_home: Path
) -> None:
    config = _write_config(tmp_path, emulators, {})
    port = _free_port()
    command = str(Path(sys.executable).with_name("imagerouter"))
    argv = [command, "mcp", "--http", "--port", str(port), "--config", str(config)]
    env = {"IMAGEROUTER_HOME": str(isolated_home), "PATH": os.environ.get("PATH", "")}
    process = await anyio.open_process(argv, env=env, stderr=subprocess.DEVNULL)
    try:
        with anyio.fail_after(_WAIT_S):
            while not _listening(port):
                assert process.returncode is None, "imagerouter mcp --http exited"
                await anyio.sleep(0.05)
        async with Client(f"http://127.0.0.1:{port}/mcp", client_info=CLIENT) as client:
            listed = await client.list_tools()
            assert {tool.name for tool in listed.tools} >= {"quote", "generate", "spend"}
            made = _data(await client.call_tool("generate", {"prompt": "over http"}))
            assert _is_file(made["images"][0]["path"])
    finally:
        process.terminate()
        with anyio.fail_after(_WAIT_S):
            await process.wait()
    [(_, status, client_name)] = _requests(tmp_path / "ledger.db")
    assert (status, client_name) == ("served", "test-agent")


async def test_emulate_starts_its_own_emulators(tmp_path: Path, isolated_home: Path) -> None:
    command = str(Path(sys.executable).with_name("imagerouter"))
    env = {"IMAGEROUTER_HOME": str(isolated_home), "PATH": os.environ.get("PATH", "")}
    params = StdioServerParameters(command=command, args=["mcp", "--emulate"], env=env)
    async with Client(params, client_info=CLIENT) as client:
        made = _data(await client.call_tool("generate", {"prompt": "x", "output_dir": "out"}))
        assert made["emulated"] is True and Decimal(made["cost_usd"]) > 0
        spend = _data(await client.call_tool("spend", {}))
        assert spend["emulated"] is True and Decimal(spend["today_usd"]) > 0
    # Emulated money is kept in the emulated ledger, never in the real one.
    assert (isolated_home / "ledger.emulated.db").exists()
    assert not (isolated_home / "ledger.db").exists()

"""`imagerouter mcp`: the MCP server for coding agents (docs/agents.md)."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

import click

from ..emulated import Emulators, emulated_errors
from ..router import Router
from .common import check_faults_need_emulate, config_option, handle_errors, load, parse_faults

__all__ = ["COMMANDS", "mcp"]

_NEEDS_EXTRA = "the MCP server needs the `mcp` package: pip install 'imagerouter-core[mcp]'"


@click.command()
@config_option
@click.option(
    "--http",
    "http",
    is_flag=True,
    help="Serve streamable HTTP (http://HOST:PORT/mcp) instead of stdio.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="With --http: loopback address to listen on.",
)
@click.option(
    "--port",
    default=8765,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="With --http: port to listen on.",
)
@click.option(
    "--emulate",
    is_flag=True,
    help="Route to the providers' emulators on loopback (no keys, no charge).",
)
@click.option(
    "--faults",
    multiple=True,
    help="With --emulate: PROVIDER=SPEC fault injection, SPEC e.g. create:503@0.5.",
)
@handle_errors
def mcp(
    config_path: Path | None,
    http: bool,
    host: str,
    port: int,
    emulate: bool,
    faults: tuple[str, ...],
) -> None:
    """Serve the Model Context Protocol (stdio, or --http) for coding agents: tools quote,
    generate, edit, spend and providers, under the config's budgets and mcp.* limits."""
    try:
        from ..mcp_server import McpService, build_server, run_http, run_stdio
    except ImportError as exc:  # the optional extra is not installed
        raise click.UsageError(f"{_NEEDS_EXTRA} ({exc})") from None
    from ..gateway.auth import is_loopback

    if (host != "127.0.0.1" or port != 8765) and not http:
        raise click.UsageError("--host and --port go with --http (stdio has no address)")
    if http and not is_loopback(host):
        # The MCP endpoint has no authentication of its own: whoever reaches it spends.
        raise click.BadParameter(
            f"{host} is not a loopback address; the MCP server listens on loopback only "
            "(it has no authentication: anyone who could reach it could spend your budget)",
            param_hint="--host",
        )
    check_faults_need_emulate(faults, emulate)
    loaded = load(config_path)
    fault_map = parse_faults(faults, loaded.plugins.providers())  # bad specs: exit 2 now
    with ExitStack() as stack:
        config = loaded.config
        if emulate:
            stack.enter_context(emulated_errors(True))
            emulators = stack.enter_context(
                Emulators.start(loaded.plugins, latency="uniform:0.2,0.6", faults=fault_map)
            )
            config = emulators.configure(config)
        router = Router(config, plugins=loaded.plugins)
        stack.callback(router.close)
        service = McpService(router, emulated=emulate)
        server = build_server(service)
        if http:
            where = f"[{host}]" if ":" in host else host
            click.echo(
                f"imagerouter MCP server on http://{where}:{port}/mcp"
                f"{' (emulated)' if emulate else ''}",
                err=True,
            )
            serving = run_http(server, host=host, port=port)
        else:
            # stdout is the protocol's: nothing else may be printed there.
            serving = run_stdio(server)

        async def main() -> None:
            try:
                await serving
            finally:
                await router.aclose()  # this loop's HTTP client, on this loop

        asyncio.run(main())


COMMANDS = [mcp]

"""The MCP server itself: the official SDK's low-level `Server`, wired to `McpService`.

The low-level server is used (not the decorator API) because the tool schemas are not
derived from Python signatures here: they come from the request model (schemas.py), and
arguments are validated by that model with the CLI's messages (arguments.py). Transports:
stdio (what Claude Code, Cursor and Codex launch) and streamable HTTP (`--http`).
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from .. import __version__
from .schemas import TOOL_DESCRIPTIONS, tool_schemas
from .service import McpService, ToolReply, client_slug, encode_image

__all__ = ["SERVER_NAME", "build_server", "client_name", "run_http", "run_stdio"]

log = logging.getLogger("imagerouter.mcp")

SERVER_NAME = "imagerouter"
_INSTRUCTIONS = (
    "Image generation and editing (GPT Image) routed to the cheapest healthy backend, with "
    "budgets. Call `quote` first when cost matters; `generate` and `edit` save files and "
    "return their paths, the images, the cost and the provider; `spend` says what is left."
)


def client_name(ctx: ServerRequestContext[Any, Any]) -> str:
    """The calling client's name from its handshake (`clientInfo.name`), as a scope name."""
    params = ctx.session.client_params
    info = getattr(params, "client_info", None)
    return client_slug(getattr(info, "name", None))


def build_server(service: McpService) -> Server[Any]:
    """A low-level MCP server whose tools are the service's."""
    schemas = tool_schemas()
    tools = [
        types.Tool(name=name, description=TOOL_DESCRIPTIONS[name], input_schema=schemas[name])
        for name in TOOL_DESCRIPTIONS
    ]

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        async def progress(value: float, message: str) -> None:
            await ctx.session.report_progress(value, None, message)

        try:
            reply = await service.call(
                params.name, params.arguments, client=client_name(ctx), progress=progress
            )
        except Exception as exc:  # a bug: still an answer the agent can read, logged in full
            log.exception("tool %s failed unexpectedly", params.name)
            reply = ToolReply(error=f"unexpected {type(exc).__name__}: {exc} (a bug)")
        return _to_result(reply)

    return Server(
        SERVER_NAME,
        version=__version__,
        instructions=_INSTRUCTIONS,
        get_tool_input_schema=lambda name: schemas.get(name),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _to_result(reply: ToolReply) -> types.CallToolResult:
    if reply.error is not None:
        # A tool error (not a protocol error): the agent reads it and can fix its call.
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=reply.error)], is_error=True
        )
    data = json.loads(json.dumps(reply.data, default=_json_default))
    content: list[types.ContentBlock] = [
        types.TextContent(type="text", text=json.dumps(data, indent=2))
    ]
    content += [
        types.ImageContent(type="image", data=encode_image(blob), mime_type=mime)
        for blob, mime in reply.images
    ]
    return types.CallToolResult(content=content, structured_content=data)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


async def run_stdio(server: Server[Any]) -> None:
    """Serve one client over this process's stdin/stdout until it closes them."""
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def run_http(server: Server[Any], *, host: str, port: int, path: str = "/mcp") -> None:
    """Serve streamable HTTP on host:port (loopback only: the CLI refuses other hosts)."""
    import uvicorn

    app = server.streamable_http_app(streamable_http_path=path, host=host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    await uvicorn.Server(config).serve()

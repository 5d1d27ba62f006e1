"""`imagerouter mcp`: a Model Context Protocol server for coding agents, with budgets.

Tools `quote`, `generate`, `edit`, `spend` and `providers` run on one Router, so an agent gets
the same routing, failover, ledger and budgets as the CLI, plus `mcp.daily_usd` (all MCP
calls together) and `mcp.max_cost_usd` (per call). Needs the `mcp` extra
(`pip install 'imagerouter-core[mcp]'`). docs/agents.md shows how to add it to a client.
"""

from __future__ import annotations

from .arguments import ToolArgumentError, parse_arguments
from .schemas import tool_schemas
from .server import build_server, run_http, run_stdio
from .service import McpService, ToolReply, client_slug

__all__ = [
    "McpService",
    "ToolArgumentError",
    "ToolReply",
    "build_server",
    "client_slug",
    "parse_arguments",
    "run_http",
    "run_stdio",
    "tool_schemas",
]

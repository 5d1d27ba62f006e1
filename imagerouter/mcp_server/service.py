"""What each MCP tool does, on one Router: the same config, ledger and budgets as the CLI.

Money rules on top of the router's own: every MCP call reserves under two budget scopes,
`mcp:*` (all MCP calls together, limited by `mcp.daily_usd`) and `mcp:<client>` (the client's
name from its MCP handshake, so the ledger says which agent spent what). A call's quoted cost
above `mcp.max_cost_usd` is refused before anything is sent. A generate that is cancelled
(the agent gave up, the client hung up) is cancelled once, the way Ctrl-C cancels the CLI:
the router records it `interrupted` and its paid job is collected by `imagerouter resume`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio

from ..budget import BudgetLimits, BudgetScope, budget_scopes
from ..emulated import emulated_errors
from ..errors import BudgetExceededError, ConfigError, ImageRouterError
from ..execution import Progress
from ..pricing import quantize
from ..request import ImageRequest
from ..result import GenerationResult
from ..router import Router
from .arguments import CallArguments, ToolArgumentError, error_text, parse_arguments
from .schemas import TOOL_DESCRIPTIONS

__all__ = [
    "ALL_CLIENTS",
    "MCP_SCOPE",
    "McpService",
    "ProgressSink",
    "ToolReply",
    "client_slug",
    "encode_image",
]

log = logging.getLogger("imagerouter.mcp")

MCP_SCOPE = "mcp"  # the budget scope kind of MCP calls
ALL_CLIENTS = "*"  # the scope name shared by every MCP client: what mcp.daily_usd limits
# Images returned inline (as MCP image content) up to this many bytes in all; the files are
# always on disk and named in the reply, so a big batch does not flood the agent's context.
MAX_INLINE_BYTES = 16 * 1024 * 1024
_PROGRESS_DRAIN_S = 5.0
_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

ProgressSink = Callable[[float, str], Awaitable[None]]


@dataclass
class ToolReply:
    """A tool's answer: JSON-ready data, inline images (bytes, MIME type), or an error."""

    data: dict[str, Any] = field(default_factory=dict)
    images: list[tuple[bytes, str]] = field(default_factory=list)
    error: str | None = None


def client_slug(name: str | None) -> str:
    """A client's name as a budget scope and ledger tag: `Claude Code` -> `Claude-Code`."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name or "").strip("-")[:64]
    return slug or "unknown"


class McpService:
    """The tools, independent of the MCP transport (server.py wires them to the SDK)."""

    def __init__(self, router: Router, *, emulated: bool = False) -> None:
        self.router = router
        self.settings = router.config.mcp
        self.emulated = emulated
        if self.settings.daily_usd is not None and router.budget is None:
            raise ConfigError(
                "mcp.daily_usd is kept in the ledger; enable it (ledger.enabled: true)",
                file=router.config.source,
                line=router.config.locate("mcp.daily_usd"),
                key="mcp.daily_usd",
            )

    @property
    def tool_names(self) -> list[str]:
        return list(TOOL_DESCRIPTIONS)

    def scopes(self, client: str) -> tuple[BudgetScope, BudgetScope]:
        limits = BudgetLimits(daily_usd=self.settings.daily_usd)
        shared = BudgetScope(MCP_SCOPE, ALL_CLIENTS, limits)
        return shared, BudgetScope(MCP_SCOPE, client_slug(client))

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any] | None,
        *,
        client: str,
        progress: ProgressSink | None = None,
    ) -> ToolReply:
        """Run one tool call; every refusal and failure is a `ToolReply` with `error`."""
        try:
            if tool == "quote":
                return self._quote(arguments)
            if tool in ("generate", "edit"):
                # Emulated: advice to `resume` a job says instead that it ends with the run.
                with emulated_errors(self.emulated):
                    return await self._run(tool, arguments, client, progress)
            if tool == "spend":
                return await asyncio.to_thread(self._spend, client)
            if tool == "providers":
                return self._providers()
        except ToolArgumentError as exc:
            return ToolReply(error=str(exc))
        except BudgetExceededError as exc:
            return ToolReply(error=_budget_text(exc))
        except ImageRouterError as exc:
            return ToolReply(error=error_text(exc))
        known = ", ".join(TOOL_DESCRIPTIONS)
        return ToolReply(error=f"no tool {tool!r}; the tools are {known}")

    # -- tools -----------------------------------------------------------------------------

    def _parse(self, tool: str, arguments: dict[str, Any] | None) -> CallArguments:
        return parse_arguments(
            tool,
            arguments,
            known_providers=self.router.plugins.providers(),
            allow_url_inputs=self.settings.allow_url_inputs,
            cap_usd=self.settings.max_cost_usd,
        )

    def _quote(self, arguments: dict[str, Any] | None) -> ToolReply:
        call = self._parse("quote", arguments)
        assert call.request is not None
        offers = self.router.quote_request(call.request)
        return ToolReply(data={"offers": [offer.to_dict() for offer in offers]})

    async def _run(
        self,
        tool: str,
        arguments: dict[str, Any] | None,
        client: str,
        progress: ProgressSink | None,
    ) -> ToolReply:
        call = self._parse(tool, arguments)
        assert call.request is not None
        self._check_cap(call.request)
        fields = dict(call.fields)
        if call.output_dir is not None:
            fields["output_dir"] = call.output_dir
        if call.idempotency_key is not None:
            # Scoped by client, as the gateway scopes keys by its caller's API key.
            fields["idempotency_key"] = call.idempotency_key
            fields["idempotency_scope"] = f"{MCP_SCOPE}:{client_slug(client)}"
        relay = _ProgressRelay(progress)
        fields["progress"] = relay.note
        with budget_scopes(*self.scopes(client)):
            if tool == "edit":
                images = fields.pop("images")
                work = self.router.aedit(call.prompt, images, **fields)
            else:
                work = self.router.agenerate(call.prompt, **fields)
            # A task of its own (it inherits the scopes): cancelling this call cancels the
            # router once, so it records the interruption instead of being cut off at
            # every await of its bookkeeping.
            job = asyncio.ensure_future(work)
        relay.start()
        try:
            result = await asyncio.shield(job)
        except BaseException:
            job.cancel()  # a no-op when the job itself failed
            # Shielded: the SDK's cancel scope would cut these awaits short again.
            with anyio.CancelScope(shield=True):
                await asyncio.wait([job])
                await relay.stop()
            raise
        await relay.stop()
        return self._result_reply(result)

    def _check_cap(self, request: ImageRequest) -> None:
        """mcp.max_cost_usd, in its own words: the cheapest eligible offer without any cap
        must fit it, or the call is refused here (nothing sent)."""
        cap = self.settings.max_cost_usd
        if cap is None:
            return
        free = request.model_copy(update={"max_cost_usd": None})
        totals = [
            offer.total_usd
            for offer in self.router.quote_request(free)
            if offer.eligible and offer.total_usd is not None
        ]
        if totals and min(totals) > cap:
            raise ToolArgumentError(
                f"mcp.max_cost_usd: the request costs at least {quantize(min(totals))} USD, "
                f"above this server's per-call cap of {cap:f} USD"
            )

    def _result_reply(self, result: GenerationResult) -> ToolReply:
        data = result.to_dict()
        data["emulated"] = self.emulated
        inline: list[tuple[bytes, str]] = []
        budget = MAX_INLINE_BYTES
        for image in result.images:
            if image.size_bytes > budget:
                data.setdefault("notes", []).append(
                    f"{image.path} is not returned inline (over {MAX_INLINE_BYTES} bytes in all)"
                )
                continue
            try:
                inline.append((image.path.read_bytes(), _MIME.get(image.format, "image/png")))
            except OSError as exc:  # the file is named in the reply all the same
                log.warning("could not read %s back: %s", image.path, exc)
                continue
            budget -= image.size_bytes
        return ToolReply(data=data, images=inline)

    def _spend(self, client: str) -> ToolReply:
        budget = self.router.budget
        data: dict[str, Any] = {
            "client": client_slug(client),
            "emulated": self.emulated,
            "per_call_cap_usd": _money(self.settings.max_cost_usd),
        }
        if budget is None:
            data["note"] = "the ledger is off (ledger.enabled: false): spend is not recorded"
            return ToolReply(data=data)
        shared, own = self.scopes(client)
        overall = budget.status()
        data["today_usd"] = overall["daily_usd"]["committed"]
        data["this_month_usd"] = overall["monthly_usd"]["committed"]
        data["budgets"] = {
            "global": overall,
            "mcp": budget.status(scope=shared),
            "this_client": budget.status(scope=own),
        }
        data["as_of"] = datetime.now(UTC).isoformat(timespec="seconds")
        return ToolReply(data=data)

    def _providers(self) -> ToolReply:
        router = self.router
        health: dict[str, list[dict[str, Any]]] = {}
        for stats in router.health_snapshot():
            health.setdefault(stats.key[0], []).append(_jsonable(stats.to_dict()))
        providers = [
            {
                "name": name,
                "title": entry.provider.title,
                "version": entry.provider.version,
                "enabled": entry.settings.enabled,
                "idempotent_creates": entry.provider.idempotent_creates,
                "backends": health.get(name, []),
            }
            for name, entry in sorted(router.catalog.entries.items())
        ]
        return ToolReply(data={"providers": providers, "emulated": self.emulated})


class _ProgressRelay:
    """The router's progress notes (sync, from inside its task) as MCP progress
    notifications, sent in order by one pump task; a note that cannot be sent is dropped,
    never an error of the call."""

    def __init__(self, sink: ProgressSink | None) -> None:
        self._sink = sink
        self._queue: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
        self._count = 0
        self._pump: asyncio.Task[None] | None = None

    def note(self, progress: Progress) -> None:
        if self._sink is None:
            return
        self._count += 1
        task = f" task {progress.task + 1}/{progress.tasks}" if progress.tasks > 1 else ""
        replayed = " (replayed: one task)" if progress.replayed else ""
        text = (
            f"{progress.provider}{task}: {progress.state} after {progress.elapsed_s:.1f}s{replayed}"
        )
        self._queue.put_nowait((float(self._count), text))

    def start(self) -> None:
        if self._sink is not None:
            self._pump = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        assert self._sink is not None
        while True:
            value, text = await self._queue.get()
            try:
                await self._sink(value, text)
            except Exception as exc:  # a client that left: the job goes on
                log.debug("progress notification not sent: %s", exc)
            finally:
                self._queue.task_done()

    async def stop(self) -> None:
        if self._pump is None:
            return
        # Whatever is queued goes out before the result (a stuck client gets a few seconds).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=_PROGRESS_DRAIN_S)
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)


def _budget_text(exc: BudgetExceededError) -> str:
    """A refusal by the MCP budget names the config key the owner set (`mcp.daily_usd`)."""
    text = error_text(exc)
    shared = f"{MCP_SCOPE}:{ALL_CLIENTS}."
    if shared in text:
        text = text.replace(shared, "mcp.") + " (the budget of every MCP call together)"
    return text


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:f}"


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Decimal):
            out[key] = f"{value:f}"
        elif isinstance(value, tuple | list):
            out[key] = [str(v) if isinstance(v, Decimal) else v for v in value]
        elif hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        elif hasattr(value, "value") and not isinstance(value, int | float | str | bool):
            out[key] = value.value
        else:
            out[key] = value
    return out


def encode_image(data: bytes) -> str:
    """An image's bytes as MCP image content carries them (base64 text)."""
    return base64.b64encode(data).decode("ascii")

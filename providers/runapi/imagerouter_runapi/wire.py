"""RunAPI's wire vocabulary: endpoint names, task statuses, reported costs and error bodies.

The client reads RunAPI's answers with these helpers and the emulator writes answers the
same helpers can read, so both sides share one description of the protocol
(/work/shared/provider-apis/runapi.md sections 2 and 5).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from imagerouter.provider_kit import ErrorBody, TaskState, parse_retry_after, parse_usd

__all__ = [
    "ACTIONS",
    "MODEL_FOR_SERVICE",
    "NO_CHANNEL",
    "OPERATION_FOR_ACTION",
    "SERVICES",
    "ErrorBody",
    "normalize_status",
    "parse_error_body",
    "parse_json",
    "parse_reported_cost",
    "parse_retry_after",
]

# model -> RunAPI service (the path segment after /api/v1/)
SERVICES: dict[str, str] = {"gpt-image-2": "gpt_image_2", "gpt-image-1.5": "gpt_image"}
# operation -> RunAPI action
ACTIONS: dict[str, str] = {"generate": "text_to_image", "edit": "edit_image"}
MODEL_FOR_SERVICE: dict[str, str] = {service: model for model, service in SERVICES.items()}
OPERATION_FOR_ACTION: dict[str, str] = {action: op for op, action in ACTIONS.items()}

# The 503 body RunAPI sends when no upstream channel can take the job: nothing was created.
NO_CHANNEL = "No active channel available"

# Every spelling seen in RunAPI's SDKs, pollers and MCP client (runapi.md section 2).
_STATUS_ALIASES: dict[str, TaskState] = {
    **dict.fromkeys(
        ("completed", "complete", "succeeded", "success", "finished"), TaskState.SUCCEEDED
    ),
    **dict.fromkeys(
        ("failed", "error", "generate_failed", "create_task_failed", "timeout"), TaskState.FAILED
    ),
    **dict.fromkeys(("canceled", "cancelled"), TaskState.CANCELED),
    **dict.fromkeys(("pending", "queued"), TaskState.QUEUED),
}

_HTML = re.compile(r"<!doctype|<html", re.IGNORECASE)
_CENTS_PER_USD = Decimal(100)
_MICRO_CENTS_PER_USD = Decimal(100_000_000)


def normalize_status(value: Any) -> TaskState:
    """RunAPI's status, case-insensitively; anything unknown counts as still running."""
    if not isinstance(value, str):
        return TaskState.RUNNING
    return _STATUS_ALIASES.get(value.strip().lower(), TaskState.RUNNING)


def parse_json(text: str) -> Any:
    """The JSON value of a body, or raise ValueError."""
    return json.loads(text)


def parse_reported_cost(body: Mapping[str, Any]) -> Decimal | None:
    """What RunAPI says it charged for a task, in USD: `usage.cost` (USD, per the PHP core),
    else `billing.settlement` (cents, or micro-cents). The reservation is not a charge."""
    usage = body.get("usage")
    if isinstance(usage, Mapping):
        cost = parse_usd(usage.get("cost"))
        if cost is not None:
            return cost
    billing = body.get("billing")
    if isinstance(billing, Mapping):
        settlement = billing.get("settlement")
        if isinstance(settlement, Mapping):
            cents = parse_usd(settlement.get("charged_amount_cents"), scale=_CENTS_PER_USD)
            if cents is not None:
                return cents
            return parse_usd(settlement.get("amount_micro_cents"), scale=_MICRO_CENTS_PER_USD)
    return None


def parse_error_body(text: str) -> ErrorBody:
    """Read every documented error shape: `{"error": "..."}`, `{"error": ..., "errors":
    {field: [msgs]}}`, `{"error": {"code", "message"}}`, a top-level `code`, and the
    `message` / `detail` / `errorMessage` / `msg` fallbacks. HTML pages from gateways say
    nothing useful and are ignored; other plain text is taken as the message."""
    text = text.strip()
    if not text or _HTML.search(text):
        return ErrorBody()
    try:
        data = json.loads(text)
    except ValueError:
        return ErrorBody(message=text[:200])
    if isinstance(data, str):
        return ErrorBody(message=data or None)
    if not isinstance(data, Mapping):
        return ErrorBody()
    message: str | None = None
    code: str | None = None
    error = data.get("error")
    if isinstance(error, Mapping):
        message = _text(error.get("message"))
        code = _text(error.get("code"))
    else:
        message = _text(error)
    for key in ("message", "detail", "errorMessage", "msg"):
        if message:
            break
        message = _text(data.get(key))
    code = code or _text(data.get("code"))
    return ErrorBody(message=message, code=code, fields=_fields(data.get("errors")))


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _fields(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, list[str]] = {}
    for name, messages in value.items():
        if isinstance(messages, str):
            out[str(name)] = [messages]
        elif isinstance(messages, list):
            out[str(name)] = [str(m) for m in messages]
        else:
            out[str(name)] = [str(messages)]
    return out

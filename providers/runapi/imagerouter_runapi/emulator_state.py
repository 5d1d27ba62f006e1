"""The RunAPI emulator's shared state and response helpers.

Everything the emulator's routes share: the options, counters and job book from
`imagerouter.emulation`, the idempotency records, pending direct uploads, the clock, and the
helpers that write RunAPI-shaped JSON answers (with `X-Request-Id` on every one) and apply
the status faults every endpoint honours.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagerouter.emulation import EmulatorState as BaseEmulatorState
from imagerouter.emulation import Fault, answer_common_fault

from .wire import NO_CHANNEL

__all__ = [
    "DirectUpload",
    "EmulatorState",
    "IdempotencyRecord",
    "RequestIdMiddleware",
    "apply_common_fault",
    "error_response",
    "iso",
    "json_response",
    "status_fault_response",
    "usd_to_cents",
]

# What the emulated account holds before any job is billed: $100.
STARTING_BALANCE_CENTS = 10_000

_STATUS_FAULT_BODIES: dict[int, Any] = {
    401: {"error": "Unauthorized"},
    402: {"error": "Insufficient credits"},
    403: {"error": {"code": "forbidden", "message": "This API key may not use this model"}},
    422: {"error": "Validation failed", "errors": {"prompt": ["was rejected (emulated fault)"]}},
    429: {"error": "Too many requests"},
    500: {"error": "Internal server error"},
    502: {"error": "Bad gateway"},
    503: {"error": NO_CHANNEL},
}


@dataclass(frozen=True)
class IdempotencyRecord:
    """The create an Idempotency-Key first came with, and the job it made."""

    fingerprint: str
    job_id: str


@dataclass
class DirectUpload:
    """A prepared direct upload (POST /api/v1/files/prepare), waiting for its PUT."""

    signed_id: str
    filename: str
    byte_size: int
    checksum: str
    data: bytes | None = None


@dataclass
class EmulatorState(BaseEmulatorState):
    """The shared emulator state plus RunAPI's own records: idempotency keys and direct
    uploads waiting for their PUT."""

    idempotency: dict[str, IdempotencyRecord] = field(default_factory=dict)
    direct_uploads: dict[str, DirectUpload] = field(default_factory=dict)

    def now(self) -> float:
        """The emulator's clock; also bills every job that finished by now."""
        return self.settle()

    def balance_cents(self) -> int:
        self.now()
        spent = self.counters.snapshot()["billed_usd"] * 100
        return STARTING_BALANCE_CENTS - int(spent)

    def spent_cents(self) -> int:
        return int(self.counters.snapshot()["billed_usd"] * 100)


def iso(seconds_from_now: float = 0.0) -> str:
    """An RFC 3339 UTC timestamp, `seconds_from_now` ahead of the wall clock."""
    when = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return when.isoformat().replace("+00:00", "Z")


class RequestIdMiddleware:
    """Puts an `X-Request-Id` on every response, as RunAPI does (errors and 404s included).
    Pure ASGI, so the `send` it wraps still leads drop_connection to the transport."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", f"req_{uuid.uuid4().hex}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A JSON answer (RequestIdMiddleware adds the request id)."""
    return JSONResponse(data, status_code=status, headers=dict(headers or {}))


def error_response(
    status: int,
    message: str,
    *,
    fields: Mapping[str, list[str]] | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """RunAPI's error envelopes: `{"error": msg}`, plus `errors` per field or a `code`."""
    body: dict[str, Any] = {"error": message}
    if fields:
        body["errors"] = {name: list(msgs) for name, msgs in fields.items()}
    if code:
        body["code"] = code
    return json_response(body, status, headers)


def status_fault_response(fault: Fault) -> JSONResponse:
    """The answer for a plain status fault (`503` and friends): no job is made."""
    status = fault.status_code
    assert status is not None
    headers = {}
    if status == 429:
        headers["Retry-After"] = _seconds(fault.retry_after if fault.retry_after is not None else 1)
    body = _STATUS_FAULT_BODIES.get(status, {"error": f"HTTP {status}"})
    return json_response(body, status, headers)


async def apply_common_fault(
    state: EmulatorState, request: Request, endpoint: str, fault: Fault | None
) -> Response | None:
    """Answer the faults every endpoint treats alike (status codes, reset; hang, except on
    create, where the job is made first), counting them. Returns None when the call should go
    on: no fault, a hang that is over, or a kind the route handles itself."""
    return await answer_common_fault(
        state, request, endpoint, fault, status_response=status_fault_response,
        hang=endpoint != "create",
    )


def usd_to_cents(amount: Decimal) -> int | float:
    cents = amount * 100
    return int(cents) if cents == cents.to_integral_value() else float(cents)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)

"""Plumbing shared by the Runflow emulator's routes: error envelopes, auth, fault answers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagerouter.emulation import Fault, answer_common_fault

from .emulator_state import RunflowEmulatorState

__all__ = ["ApiBase", "error", "malformed"]

_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    402: "INSUFFICIENT_CREDIT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "MODEL_UNAVAILABLE",
}


def error(
    status: int,
    message: str,
    code: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {
        "code": code or _STATUS_CODES.get(status, "ERROR"),
        "message": message,
        "errors": errors,
    }
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def fault_response(fault: Fault) -> JSONResponse:
    status = fault.status_code or 500
    headers = {}
    if status == 429 and fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    if status == 422:
        errors = [{"field": "input", "message": "rejected by an injected fault"}]
        return error(422, "Validation failed (emulated fault)", errors=errors)
    return error(status, f"emulated fault: HTTP {status}", headers=headers)


def malformed() -> Response:
    return Response(b'{"id": "not json', status_code=200, media_type="application/json")


class ApiBase:
    """Auth, fault drawing and small helpers every route group uses."""

    def __init__(self, state: RunflowEmulatorState) -> None:
        self.state = state
        self.options = state.options
        self.counters = state.counters

    def _authorized(self, request: Request) -> bool:
        return self.state.authorized(request)

    def _draw(self, endpoint: str) -> Fault | None:
        return self.state.draw(endpoint, count=True)

    async def _common_fault(self, request: Request, fault: Fault | None) -> Response | None:
        """Answer a fault that needs no job: a status, a reset, a hang or garbage (counted
        when drawn)."""
        return await answer_common_fault(
            self.state, request, "", fault, status_response=fault_response,
            malformed_response=malformed, count=False,
        )

    @staticmethod
    def _base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def _json(self, request: Request) -> Any:
        try:
            return json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

"""Errors in OpenAI's shape, with the status codes the official clients expect.

`{"error": {"message", "type", "param", "code"}}`. The official `openai` clients pick their
exception class from the status: 400 `BadRequestError`, 401 `AuthenticationError`, 404
`NotFoundError`, 429 `RateLimitError`, 5xx `InternalServerError`. Every error a paid call can
end in carries `x-should-retry: false`: the gateway has already retried and failed over, and a
client retry would start (and pay for) a new job.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

from ..errors import (
    BackendsUnavailableError,
    BudgetExceededError,
    ConfigError,
    IdempotencyConflictError,
    IdempotentRequestFailedError,
    ImageRouterError,
    InputImageError,
    InvalidRequestError,
    JobTimedOutError,
    LedgerUnavailableError,
    MissingApiKeyError,
    NoEligibleOfferError,
    ProviderError,
    RequestValidationError,
    SubmissionUnknownError,
)
from ..outputs import OutputDirError

__all__ = [
    "ApiError",
    "api_error_from",
    "bad_request",
    "error_response",
    "not_found",
    "openai_param",
]

# Our request fields that OpenAI calls something else.
_PARAM_NAMES = {"images": "image", "tier": "model"}


@dataclass
class ApiError(Exception):
    """An error answer: HTTP status plus OpenAI's error object."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(message: str) -> ApiError:
    return ApiError(404, message, code="not_found")


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    merged = {**error.headers, **(headers or {})}
    if error.status >= 429:
        merged.setdefault("x-should-retry", "false")
    return JSONResponse(error.body(), status_code=error.status, headers=merged)


def openai_param(field_name: str) -> str:
    """`images[0]` -> `image`; field names OpenAI shares pass through."""
    base = re.split(r"[.\[]", field_name, maxsplit=1)[0]
    return _PARAM_NAMES.get(base, base)


def api_error_from(exc: BaseException, *, request_id: str | None = None) -> ApiError:
    """Map an imagerouter error (or anything else) to the answer a client gets."""
    where = f" (imagerouter request id {request_id})" if request_id else ""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, OutputDirError):
        # The gateway's own directory, not the client's request: a server fault, and its path
        # is the operator's business, not the client's.
        return ApiError(
            500,
            f"the gateway cannot save images: its output directory is not writable{where}",
            type="server_error",
            code="output_dir_unwritable",
        )
    if isinstance(exc, RequestValidationError):
        return bad_request(f"{exc.field}: {exc.detail}", param=openai_param(exc.field))
    if isinstance(exc, InputImageError):
        param = "mask" if exc.source.startswith("mask") else "image"  # labels from bodies.py
        return bad_request(f"{param}: {exc.detail}", param=param, code="invalid_image")
    if isinstance(exc, BackendsUnavailableError):
        # Nothing was accepted, so nothing was paid: say when a retry may work, at once.
        return ApiError(503, f"{exc}{where}", type="server_error", code="no_backend_available",
                        headers={"retry-after": str(max(1, math.ceil(exc.retry_after_s)))})
    if isinstance(exc, NoEligibleOfferError):
        if exc.offers:
            return bad_request(str(exc), code="no_eligible_backend")
        return ApiError(503, f"{exc}{where}", type="server_error", code="no_backend_available")
    if isinstance(exc, IdempotencyConflictError):
        return ApiError(409, str(exc), type="invalid_request_error",
                        code="idempotency_conflict")
    if isinstance(exc, IdempotentRequestFailedError):
        return ApiError(502, f"{exc}{where}", type="server_error",
                        code="idempotent_request_failed")
    if isinstance(exc, BudgetExceededError):
        # OpenAI answers an exhausted quota with 429 insufficient_quota; clients handle that.
        # A gateway key's own budget (key_limits.py) gets OpenAI's exact code too.
        code = "insufficient_quota" if exc.scope else "budget_exceeded"
        return ApiError(429, str(exc), type="insufficient_quota", code=code)
    if isinstance(exc, InvalidRequestError):
        refused = openai_param(next(iter(exc.fields))) if exc.fields else None
        return bad_request(str(exc), param=refused, code="provider_rejected")
    if isinstance(exc, SubmissionUnknownError):
        return ApiError(
            502,
            f"submission outcome unknown, possibly billed: {exc}{where}. Do not resend blindly: "
            "the ledger has the job (`imagerouter history`, `imagerouter resume`).",
            type="server_error",
            code="submission_unknown",
        )
    if isinstance(exc, JobTimedOutError):
        return ApiError(504, f"{exc}{where}", type="server_error", code="job_timed_out")
    if isinstance(exc, ProviderError):
        return ApiError(502, f"{exc}{where}", type="server_error", code=_snake(type(exc).__name__))
    if isinstance(exc, MissingApiKeyError):
        return ApiError(503, f"{exc}{where}", type="server_error", code="provider_not_configured")
    if isinstance(exc, LedgerUnavailableError):
        # Budgets fail closed. The server's address is the operator's business: it goes to
        # the log, the client gets what to do.
        logging.getLogger("imagerouter.gateway").warning("%s%s", exc, where)
        return ApiError(503, f"the gateway's ledger is unavailable: no paid job starts until it "
                        f"is back; retry later{where}", type="server_error",
                        code="ledger_unavailable", headers={"retry-after": "5"})
    if isinstance(exc, ConfigError | ImageRouterError):
        return ApiError(500, f"{exc}{where}", type="server_error", code=_snake(type(exc).__name__))
    return ApiError(
        500, f"internal error ({type(exc).__name__}){where}", type="server_error", code="internal"
    )


def _snake(name: str) -> str:
    name = name.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()

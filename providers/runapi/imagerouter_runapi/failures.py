"""RunAPI failures as imagerouter errors.

One HTTP status or transport failure becomes one `imagerouter.errors.ProviderError` subclass,
with `accepted` answering "did RunAPI take (and maybe bill) the job?". The answer depends on
the call: a failed poll is always about a job RunAPI already has (`yes`); a create that got no
answer may have made one (`unknown`); uploads and balance checks never make jobs (`no`).
Bodies and messages pass through `redact` so the API key can never end up in an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import httpx

from imagerouter.errors import (
    Accepted,
    AuthenticationError,
    ConnectionFailedError,
    InsufficientCreditsError,
    InvalidRequestError,
    MalformedResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    SubmissionUnknownError,
)

from .wire import NO_CHANNEL, parse_error_body, parse_retry_after

__all__ = ["Call", "error_from_response", "error_from_transport", "malformed"]

PROVIDER = "runapi"

Call = Literal["create", "get", "upload", "check"]
Redact = Callable[[str], str]

_DEFAULT_MESSAGES: dict[int, str] = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Insufficient credits",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Payload too large",
    422: "Validation failed",
    429: "Too many requests",
    503: "Service unavailable",
}

# Failures where the request provably never reached RunAPI.
_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)


def error_from_response(
    response: httpx.Response,
    *,
    call: Call,
    redact: Redact,
    task_id: str | None = None,
    client_ref: str | None = None,
) -> ProviderError:
    """The error for a non-2xx answer."""
    status = response.status_code
    text = redact(response.text)
    parsed = parse_error_body(text)
    said = parsed.message or _DEFAULT_MESSAGES.get(status) or f"HTTP {status}"
    common: dict[str, Any] = {
        "provider": PROVIDER,
        "status_code": status,
        "request_id": response.headers.get("x-request-id"),
        "code": parsed.code,
        "body": text or None,
        "task_id": task_id or response.headers.get("x-runapi-task-id"),
        "client_ref": client_ref,
    }
    polled = call == "get"
    refused: Accepted = "yes" if polled else "no"

    if status in (401, 403):
        return AuthenticationError(
            f"RunAPI refused the API key: {said}", accepted=refused, **common
        )
    if status == 402:
        return InsufficientCreditsError(
            f"RunAPI account is out of credit: {said}", accepted=refused, **common
        )
    if status == 429:
        return RateLimitedError(
            f"RunAPI rate limit: {said}",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            accepted=refused,
            **common,
        )
    if status == 404:
        common["code"] = parsed.code or "not_found"
        what = "task" if polled else "endpoint or resource"
        return InvalidRequestError(
            f"RunAPI has no such {what}: {said}",
            fields=parsed.fields,
            accepted=refused,
            **common,
        )
    if status == 409:
        common["code"] = parsed.code or "idempotency_conflict"
        return InvalidRequestError(
            f"RunAPI refused a reused Idempotency-Key with different input: {said}",
            fields=parsed.fields,
            accepted=refused,
            **common,
        )
    if status >= 500:
        accepted: Accepted
        if polled:
            accepted = "yes"
        elif status == 503 and (parsed.message or "").strip() == NO_CHANNEL:
            accepted = "no"  # RunAPI says no channel took it: nothing was created
        else:
            accepted = "unknown" if call == "create" else "no"
        return ProviderUnavailableError(
            f"RunAPI is unavailable: {said}", accepted=accepted, **common
        )
    # 400, 413, 422 and any other 4xx: RunAPI refused the request itself.
    common["code"] = parsed.code or "validation"
    detail = "; ".join(f"{name} {', '.join(msgs)}" for name, msgs in parsed.fields.items())
    message = f"RunAPI refused the request: {said}" + (f" ({detail})" if detail else "")
    return InvalidRequestError(message, fields=parsed.fields, accepted=refused, **common)


def error_from_transport(
    exc: httpx.TransportError,
    *,
    call: Call,
    redact: Redact,
    task_id: str | None = None,
    client_ref: str | None = None,
) -> ProviderError:
    """The error for a request that got no HTTP answer."""
    what = redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
    common: dict[str, Any] = {"provider": PROVIDER, "task_id": task_id, "client_ref": client_ref}
    if call == "get":
        if isinstance(exc, _NEVER_SENT):
            return ConnectionFailedError(
                f"could not reach RunAPI to poll: {what}", accepted="yes", **common
            )
        return ProviderUnavailableError(
            f"RunAPI did not answer a poll: {what}", accepted="yes", **common
        )
    if isinstance(exc, _NEVER_SENT):
        return ConnectionFailedError(f"could not reach RunAPI: {what}", accepted="no", **common)
    if call == "create":
        return SubmissionUnknownError(
            f"RunAPI got the create but no answer came back, so the task may exist: {what}",
            accepted="unknown",
            **common,
        )
    return ProviderUnavailableError(f"RunAPI did not answer: {what}", accepted="no", **common)


def malformed(
    response: httpx.Response,
    why: str,
    *,
    call: Call,
    redact: Redact,
    task_id: str | None = None,
    client_ref: str | None = None,
) -> MalformedResponseError:
    """A 2xx answer that cannot be read. After a create, the task may exist."""
    accepted: Accepted = "unknown" if call == "create" else "yes" if call == "get" else "no"
    return MalformedResponseError(
        f"RunAPI answered with something unreadable: {why}",
        provider=PROVIDER,
        status_code=response.status_code,
        request_id=response.headers.get("x-request-id"),
        body=redact(response.text) or None,
        accepted=accepted,
        task_id=task_id or response.headers.get("x-runapi-task-id"),
        client_ref=client_ref,
    )

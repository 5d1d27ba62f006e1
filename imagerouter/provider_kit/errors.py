"""HTTP failures as imagerouter errors, the same way for every provider.

Every failure answers one question first: did the provider take (and maybe bill) the job?
That depends on the call more than on the status: a failed poll is always about a job the
provider already has (`yes`); a create that got a 5xx or no answer at all may have made one
(`unknown`), and a look-up of such a create that fails leaves it `unknown`; uploads and free
checks never make jobs (`no`). A provider that says
in a 5xx that nothing was created (a "no capacity" body) passes `nothing_created=True`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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

from .parsing import retry_after_of

__all__ = [
    "NEVER_SENT",
    "Call",
    "ErrorBody",
    "accepted_for",
    "error_from_status",
    "error_from_transport",
    "malformed",
]

Call = Literal["create", "get", "find", "upload", "check"]
Redact = Callable[[str], str]

# Transport failures that prove the request never reached the provider.
NEVER_SENT: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)

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
_BODY_EXCERPT = 300


@dataclass(frozen=True)
class ErrorBody:
    """What an error body said, whatever the provider's shape (each plugin parses its own)."""

    message: str | None = None
    code: str | None = None
    fields: dict[str, list[str]] = field(default_factory=dict)


def accepted_for(
    call: Call, status: int | None = None, *, nothing_created: bool = False
) -> Accepted:
    """Whether the provider holds a job after this call failed with `status` (None: no
    HTTP answer at all)."""
    if call == "get":
        return "yes"
    if call == "find":  # a failed look-up of a lost create leaves it as unknown as it was
        return "unknown"
    if call == "create" and not nothing_created and (status is None or status >= 500):
        return "unknown"
    return "no"


def error_from_status(
    response: httpx.Response,
    *,
    provider: str,
    title: str,
    call: Call,
    body: ErrorBody,
    redact: Redact,
    request_id: str | None = None,
    task_id: str | None = None,
    client_ref: str | None = None,
    nothing_created: bool = False,
    hints: Mapping[int, str] | None = None,
) -> ProviderError:
    """The error for a non-2xx answer. `hints` replaces the phrase for a status (a
    provider's own meaning of a 409, say); `title` is the provider's display name."""
    status = response.status_code
    text = redact(response.text[:_BODY_EXCERPT]) if response.content else ""
    said = redact(body.message or _DEFAULT_MESSAGES.get(status) or f"HTTP {status}")
    accepted = accepted_for(call, status, nothing_created=nothing_created)
    common: dict[str, Any] = {
        "provider": provider,
        "status_code": status,
        "request_id": request_id,
        "code": redact(body.code) if body.code else None,
        "body": text or None,
        "task_id": task_id,
        "client_ref": client_ref,
        "accepted": accepted,
    }
    hint = (hints or {}).get(status)

    def lead(default: str) -> str:
        return f"{title} {hint or default}: {said}"

    if status in (401, 403):
        return AuthenticationError(lead("refused the API key"), **common)
    if status == 402:
        return InsufficientCreditsError(lead("account is out of credit"), **common)
    if status == 429:
        retry_after = retry_after_of(response.headers)
        return RateLimitedError(lead("rate limit"), retry_after=retry_after, **common)
    if status >= 500:
        return ProviderUnavailableError(lead("is unavailable"), **common)
    if 400 <= status < 500:
        if status == 404:
            common["code"] = common["code"] or "not_found"
            what = "task" if call == "get" else "endpoint or resource"
            return InvalidRequestError(lead(f"has no such {what}"), fields=body.fields, **common)
        if status == 409:
            common["code"] = common["code"] or "conflict"
        else:
            common["code"] = common["code"] or "validation"
        detail = "; ".join(f"{name} {', '.join(msgs)}" for name, msgs in body.fields.items())
        message = lead("refused the request") + (f" ({redact(detail)})" if detail else "")
        return InvalidRequestError(message, fields=body.fields, **common)
    return MalformedResponseError(lead(f"answered an unexpected HTTP {status}"), **common)


def error_from_transport(
    exc: httpx.RequestError,
    *,
    provider: str,
    title: str,
    call: Call,
    redact: Redact,
    task_id: str | None = None,
    client_ref: str | None = None,
    answered: bool = False,
) -> ProviderError:
    """The error for a request that got no (complete) HTTP answer: "never sent" when the
    failure proves it (connect errors), else "sent, outcome unknown" for a create.
    `answered`: a 2xx status line had come and the body was cut off (a streamed answer)."""
    what = redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
    never_sent = isinstance(exc, NEVER_SENT) and not answered
    common: dict[str, Any] = {
        "provider": provider,
        "task_id": task_id,
        "client_ref": client_ref,
        "accepted": "no" if never_sent and call != "get" else accepted_for(call),
    }
    if call == "get":
        if never_sent:
            return ConnectionFailedError(f"could not reach {title} to poll: {what}", **common)
        return ProviderUnavailableError(f"{title} did not answer a poll: {what}", **common)
    if never_sent:
        return ConnectionFailedError(f"could not reach {title}: {what}", **common)
    if call == "create":
        lost = "its answer was cut off" if answered else "no answer came back"
        return SubmissionUnknownError(
            f"{title} got the create but {lost}, so the job may exist: {what}", **common
        )
    return ProviderUnavailableError(f"{title} did not answer: {what}", **common)


def malformed(
    response: httpx.Response,
    why: str,
    *,
    provider: str,
    title: str,
    call: Call,
    redact: Redact,
    request_id: str | None = None,
    task_id: str | None = None,
    client_ref: str | None = None,
) -> MalformedResponseError:
    """A 2xx answer that cannot be read. After a create, the job may exist."""
    return MalformedResponseError(
        f"{title} answered with something unreadable: {why}",
        provider=provider,
        status_code=response.status_code,
        request_id=request_id,
        body=redact(response.text[:_BODY_EXCERPT]) or None,
        accepted=accepted_for(call, None),
        task_id=task_id,
        client_ref=client_ref,
    )

"""Every error imagerouter raises, as one tree.

```
ImageRouterError
├── ConfigError                  a config file or dict is wrong (file, line, key path)
├── RequestValidationError       a request field is wrong (field, what is allowed)
├── InputImageError              an edit input is missing, not PNG/JPEG/WebP, or too large
├── MissingApiKeyError           a provider is used without a key (names the variable)
├── NoEligibleOfferError         no backend can serve the request (carries every offer's reason)
├── BudgetExceededError          the request does not fit a cost limit; nothing was sent
├── IdempotencyConflictError     an idempotency key reused for a different request
├── IdempotentRequestFailedError the first call with this idempotency key failed after paying
├── LedgerUnavailableError       the ledger's server cannot be reached; nothing paid was started
└── ProviderError                something went wrong with a provider (carries `accepted`)
    ├── AuthenticationError          401/403: the key is wrong or lacks a scope   accepted=no
    ├── InsufficientCreditsError     402: out of credit                            accepted=no
    ├── InvalidRequestError          400/404/409/413/422: the provider refused it  accepted=no
    ├── RateLimitedError             429 (with `retry_after` seconds)              accepted=no
    ├── ProviderUnavailableError     503 "no job" (no), other 5xx on create (unknown)
    ├── ConnectionFailedError        nothing reached the provider                  accepted=no
    ├── SubmissionUnknownError       sent, but no answer: it may be billed         accepted=unknown
    ├── MalformedResponseError       the provider answered with something unreadable
    ├── JobFailedError               accepted, then failed (not billed)            accepted=yes
    ├── JobTimedOutError             accepted, still running at the deadline       accepted=yes
    └── DownloadFailedError          accepted and done, but an image did not reach disk
```

`accepted` answers the first question every failure must answer: did the provider take (and
possibly bill) the job? The router decides failover from it. No error message, repr or
attribute ever holds an API key: errors carry the provider name, the HTTP status, the
provider's request id and a truncated body, never the request or its headers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pathlib import Path

Accepted = Literal["yes", "no", "unknown"]

__all__ = [
    "Accepted",
    "AuthenticationError",
    "BackendsUnavailableError",
    "BudgetExceededError",
    "ConfigError",
    "ConnectionFailedError",
    "DownloadFailedError",
    "IdempotencyConflictError",
    "IdempotentRequestFailedError",
    "ImageRouterError",
    "InputImageError",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "JobFailedError",
    "JobTimedOutError",
    "LedgerUnavailableError",
    "MalformedResponseError",
    "MissingApiKeyError",
    "NoEligibleOfferError",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "RequestValidationError",
    "SubmissionUnknownError",
]


class ImageRouterError(Exception):
    """Base of every error imagerouter raises on purpose."""


class ConfigError(ImageRouterError):
    """A config is wrong. The message reads `file:line: key.path: what is wrong`."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, key: str = ""
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.detail = message
        where = file or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class RequestValidationError(ImageRouterError, ValueError):
    """A request field is wrong; `field` names it and the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}")


class InputImageError(ImageRouterError, ValueError):
    """An input image (or mask) cannot be used; `source` names the file or input."""

    def __init__(self, source: str | Path, message: str) -> None:
        self.source = str(source)
        self.detail = message
        super().__init__(f"{self.source}: {message}")


class MissingApiKeyError(ImageRouterError):
    """A provider needs a key that is not configured."""

    def __init__(self, provider: str, env_var: str) -> None:
        self.provider = provider
        self.env_var = env_var
        # No CLI flags here: the Python API has none. The CLI adds the hint that fits.
        super().__init__(
            f"{provider}: no API key. Set {env_var} (or providers.{provider}.api_key in the "
            "config)."
        )


class NoEligibleOfferError(ImageRouterError):
    """No backend can serve the request; `offers` holds every candidate with its reason."""

    def __init__(self, message: str, offers: Sequence[Any] = ()) -> None:
        self.offers = tuple(offers)
        reasons = [
            f"  {o.provider}/{o.model}: {o.reason}"
            for o in self.offers
            if getattr(o, "reason", None)
        ]
        super().__init__("\n".join([message, *reasons]) if reasons else message)


class BackendsUnavailableError(NoEligibleOfferError):
    """Every backend that could serve the request is out for a while (ejected after failures,
    or cooling down) and none has accepted it: nothing was paid. `retry_after_s`: when the
    first of them may be tried again."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class BudgetExceededError(ImageRouterError):
    """The request's cost does not fit a limit. Raised before any paid call. `scope`: the
    budget scope whose limit it is ("key:team-a"), None for the global budget."""

    def __init__(self, message: str, *, limit: str = "", needed_usd: Any = None,
                 scope: str | None = None) -> None:
        self.limit = limit
        self.needed_usd = needed_usd
        self.scope = scope
        super().__init__(message)


class IdempotencyConflictError(ImageRouterError):
    """An idempotency key already names another request (a different prompt, size, input
    image, ...). Nothing was sent. `request_id` is the first request's ledger id."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(message)


class IdempotentRequestFailedError(ImageRouterError):
    """The first call with this idempotency key failed after a provider may have billed it,
    so a repeat is not sent again; the message is the first call's error. `request_id` is
    its ledger id (`imagerouter history`, `imagerouter resume` collect what was paid)."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(message)


_BODY_LIMIT = 300


class LedgerUnavailableError(ImageRouterError, sqlite3.OperationalError):
    """The ledger cannot be read or written: its PostgreSQL server refuses connections, or
    dropped one mid-write. Budgets fail closed: a request whose writes fail this way stops
    before any paid call. Also a `sqlite3.OperationalError`, which the ledger's callers
    already handle. The message names the server (password redacted), never a secret."""


class ProviderError(ImageRouterError):
    """A provider call failed. `accepted` says whether the provider took the job."""

    default_accepted: Accepted = "no"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        request_id: str | None = None,
        accepted: Accepted | None = None,
        code: str | None = None,
        body: str | None = None,
        task_id: str | None = None,
        client_ref: str | None = None,
    ) -> None:
        self.provider = provider
        self.status_code = status_code
        self.request_id = request_id
        self.accepted: Accepted = accepted or self.default_accepted
        self.code = code
        self.body = body[:_BODY_LIMIT] if body else None
        self.task_id = task_id
        self.client_ref = client_ref
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [f"{self.provider}: {self.message}"]
        facts = []
        if self.status_code is not None:
            facts.append(f"HTTP {self.status_code}")
        if self.code:
            facts.append(f"code {self.code}")
        if self.task_id:
            facts.append(f"task {self.task_id}")
        if self.client_ref:
            facts.append(f"client_ref {self.client_ref}")
        if self.request_id:
            facts.append(f"request id {self.request_id}")
        facts.append(f"accepted: {self.accepted}")
        parts.append(f"({', '.join(facts)})")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._render()!r})"


class AuthenticationError(ProviderError):
    """401 or 403: the key is missing, wrong, or lacks a permission."""


class InsufficientCreditsError(ProviderError):
    """402: the account is out of credit."""


class InvalidRequestError(ProviderError):
    """The provider refused the request itself; `fields` maps field names to messages."""

    def __init__(
        self, message: str, *, fields: Mapping[str, Sequence[str]] | None = None, **kw: Any
    ) -> None:
        self.fields = {k: list(v) for k, v in (fields or {}).items()}
        super().__init__(message, **kw)


class RateLimitedError(ProviderError):
    """429: no job was created. `retry_after` is in seconds when the provider said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class ProviderUnavailableError(ProviderError):
    """The provider is down (503, or another 5xx). On a create, `accepted` may be unknown."""


class ConnectionFailedError(ProviderError):
    """The request never reached the provider (DNS, refused, connect timeout)."""


class SubmissionUnknownError(ProviderError):
    """The create was sent but no answer came back: the job may exist and may be billed."""

    default_accepted: Accepted = "unknown"


class MalformedResponseError(ProviderError):
    """The provider answered with a body that cannot be read."""


class JobFailedError(ProviderError):
    """The provider accepted the job and it failed. Providers do not bill failed jobs."""

    default_accepted: Accepted = "yes"


class JobTimedOutError(ProviderError):
    """The job was accepted and still had not finished at the poll deadline."""

    default_accepted: Accepted = "yes"


class DownloadFailedError(ProviderError):
    """The job finished but an image did not reach disk; the message says where it is."""

    default_accepted: Accepted = "yes"

    def __init__(self, message: str, *, url: str | None = None, **kw: Any) -> None:
        self.url = url
        super().__init__(message, **kw)

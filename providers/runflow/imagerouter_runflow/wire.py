"""Reading Runflow's answers: run objects, statuses, output URLs, list pages and errors.

Runflow's sources disagree on several shapes (see docs/providers/runflow.md), so every
documented variant is accepted here: `id` or `run_id`, `canceled` or `cancelled`, output URLs
under `outputs[].url`, `image_urls`, `image`, `images[].url`, `url` or `output_url`, errors as
`{code, message, errors}` or FastAPI's `{detail}`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from imagerouter.errors import (
    Accepted,
    AuthenticationError,
    InsufficientCreditsError,
    InvalidRequestError,
    MalformedResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
)
from imagerouter.provider import TaskState

from .mapping import PROVIDER

__all__ = [
    "STATUS_MAP",
    "error_from_response",
    "list_page",
    "output_urls",
    "parse_cost",
    "parse_retry_after",
    "request_id_of",
    "run_id_of",
    "run_state",
]

STATUS_MAP: dict[str, TaskState] = {
    "queued": TaskState.QUEUED,
    "dispatching": TaskState.QUEUED,
    "pending": TaskState.QUEUED,
    "running": TaskState.RUNNING,
    "succeeded": TaskState.SUCCEEDED,
    "partial_succeeded": TaskState.PARTIAL,
    "failed": TaskState.FAILED,
    "errored": TaskState.FAILED,
    "canceled": TaskState.CANCELED,
    "cancelled": TaskState.CANCELED,
}


def run_state(run: Mapping[str, Any]) -> TaskState:
    """The normalized state of a run; an unknown status is still running (keep polling)."""
    status = run.get("status_code", run.get("status"))
    return STATUS_MAP.get(str(status).lower(), TaskState.RUNNING)


def run_id_of(run: Mapping[str, Any]) -> str | None:
    for key in ("id", "run_id"):
        value = run.get(key)
        if isinstance(value, str | int) and str(value):
            return str(value)
    return None


def parse_cost(value: Any) -> Decimal | None:
    """Runflow's `cost` (a USD decimal string) as Decimal; None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


def output_urls(output: Any) -> tuple[str, ...]:
    """Image URLs from a run's `output`, trying each documented shape in order."""
    if not isinstance(output, Mapping):
        return ()
    shapes = (
        _entries_urls(output.get("outputs"), image_only=True),
        _strings(output.get("image_urls")),
        _image_field(output.get("image")),
        _entries_urls(output.get("images"), image_only=False),
        _strings(output.get("url")),
        _strings(output.get("output_url")),
    )
    for urls in shapes:
        if urls:
            return urls
    return ()


def _entries_urls(value: Any, *, image_only: bool) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return ()
    urls = []
    for entry in value:
        if isinstance(entry, str) and entry:
            urls.append(entry)
        elif isinstance(entry, Mapping):
            if image_only and entry.get("type") not in (None, "image"):
                continue
            url = entry.get("url")
            if isinstance(url, str) and url:
                urls.append(url)
    return tuple(urls)


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, Sequence):
        return tuple(item for item in value if isinstance(item, str) and item)
    return ()


def _image_field(value: Any) -> tuple[str, ...]:
    if isinstance(value, Mapping):
        return _strings(value.get("url"))
    if isinstance(value, Sequence) and not isinstance(value, str):
        return _entries_urls(value, image_only=False)
    return _strings(value)


def list_page(body: Any) -> tuple[list[Mapping[str, Any]], str | None]:
    """The runs and the next cursor of one `GET /v1/runs` page, whatever its envelope."""
    items: Any = None
    cursor: Any = None
    if isinstance(body, list):
        items = body
    elif isinstance(body, Mapping):
        for key in ("data", "items", "runs", "results"):
            if isinstance(body.get(key), list):
                items = body[key]
                break
        holders = [body] + [
            body[key] for key in ("meta", "pagination") if isinstance(body.get(key), Mapping)
        ]
        for holder in holders:
            for key in ("next", "pq", "cursor", "next_cursor"):
                if holder.get(key):
                    cursor = holder[key]
                    break
            if cursor:
                break
    runs = [item for item in items or [] if isinstance(item, Mapping)]
    return runs, _cursor_value(cursor)


def _cursor_value(cursor: Any) -> str | None:
    if not isinstance(cursor, str | int) or not str(cursor):
        return None
    text = str(cursor)
    if text.startswith(("http://", "https://", "/")) and "?" in text:
        # A `next` link rather than a bare cursor: take its cursor parameter.
        params = httpx.URL(text).params
        return params.get("pq") or params.get("cursor") or None
    return text


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date; None when absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _field_errors(body: Mapping[str, Any]) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    entries: Any = body.get("errors")
    if not isinstance(entries, list):
        entries = body.get("detail")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        name = entry.get("field")
        if name is None and isinstance(entry.get("loc"), list):
            # FastAPI: loc = ["body", "input", "num_images"]; drop the "body" prefix.
            loc = [str(part) for part in entry["loc"] if part != "body"]
            name = ".".join(loc)
        message = entry.get("message", entry.get("msg", "is not valid"))
        fields.setdefault(str(name or "request"), []).append(str(message))
    return fields


def error_from_response(
    response: httpx.Response,
    *,
    accepted_5xx: Accepted,
    accepted: Accepted | None = None,
    task_id: str | None = None,
    scrub: Callable[[str], str] = str,
) -> ProviderError:
    """The imagerouter error for a non-2xx answer.

    `accepted_5xx` is what a 5xx (other than 503 MODEL_UNAVAILABLE) means for this call:
    "unknown" on a create, since the run may exist. `accepted`, when given, overrides every
    status (a poll is always of an accepted run)."""
    status = response.status_code
    raw = _json(response)
    body = raw if isinstance(raw, Mapping) else {}
    code = body.get("code")
    code = scrub(str(code)) if code is not None else None
    message = body.get("message")
    if message is None and isinstance(body.get("detail"), str):
        message = body["detail"]
    text = str(message) if message else (response.reason_phrase or f"HTTP {status}")
    common: dict[str, Any] = {
        "provider": PROVIDER,
        "status_code": status,
        "request_id": request_id_of(response, body),
        "code": code,
        "body": scrub(response.text[:300]) if response.content else None,
        "task_id": task_id,
    }
    text = scrub(text)
    if status in (401, 403):
        return AuthenticationError(text, accepted=accepted or "no", **common)
    if status == 402:
        return InsufficientCreditsError(text, accepted=accepted or "no", **common)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return RateLimitedError(text, retry_after=retry_after, accepted=accepted or "no", **common)
    if status == 503 and code == "MODEL_UNAVAILABLE":
        return ProviderUnavailableError(text, accepted=accepted or "no", **common)
    if status >= 500:
        return ProviderUnavailableError(text, accepted=accepted or accepted_5xx, **common)
    if 400 <= status < 500:
        fields = _field_errors(body) if status in (400, 422) else {}
        return InvalidRequestError(text, fields=fields, accepted=accepted or "no", **common)
    return MalformedResponseError(
        f"unexpected HTTP {status}: {text}", accepted=accepted or accepted_5xx, **common
    )


def request_id_of(response: httpx.Response, body: Mapping[str, Any]) -> str | None:
    """The request id Runflow gave this answer (body `request_id` or `Runflow-Request-Id`)."""
    value = body.get("request_id") or response.headers.get("runflow-request-id")
    return str(value) if value else None

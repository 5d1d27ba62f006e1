"""Reading Runflow's answers: run objects, statuses, output URLs, list pages, field errors.

Runflow's sources disagree on several shapes (see docs/providers/runflow.md), so every
documented variant is accepted here: `id` or `run_id`, `canceled` or `cancelled`, output URLs
under `outputs[].url`, `image_urls`, `image`, `images[].url`, `url` or `output_url`, errors as
`{code, message, errors}` or FastAPI's `{detail}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from imagerouter.provider_kit import TaskState

__all__ = [
    "STATUS_MAP",
    "field_errors",
    "list_page",
    "output_urls",
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


def field_errors(body: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per-field messages of a 400/422 body: Runflow's `errors[{field, message}]` or
    FastAPI's `detail[{loc, msg}]`."""
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

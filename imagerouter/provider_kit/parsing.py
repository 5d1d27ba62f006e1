"""Reading what every HTTP provider answers: Retry-After, USD amounts, JSON bodies.

One spelling of each, so two plugins never disagree on what `Retry-After: 0` or a cost of
`"-1"` means.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

__all__ = ["json_or_none", "parse_retry_after", "parse_usd", "retry_after_of"]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` in seconds: a number of seconds or an HTTP date, never negative; None
    when absent or unreadable. `now` is injectable so tests need no real clock."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
        return None
    return max(0.0, seconds)


def retry_after_of(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a 429's headers: `retry-after-ms` (OpenAI's, finer than a
    second) when it is readable, else `Retry-After`."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = float("nan")
        if value == value and 0 <= value < float("inf"):
            return value
    return parse_retry_after(headers.get("retry-after"), now=now)


def parse_usd(value: Any, *, scale: Decimal | int = 1) -> Decimal | None:
    """An amount a provider reported, as USD: finite and >= 0, else None. Booleans are not
    numbers here (JSON `true` is no price). `scale` divides (100 for cents)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite() or amount < 0:
        return None
    return amount / Decimal(scale) if scale != 1 else amount


def json_or_none(response: httpx.Response) -> Any:
    """The JSON body of `response`, or None when it is empty or not JSON."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None

"""The provider kit's parsing, data and redaction helpers: one spelling for every plugin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime

import httpx
import pytest
from pydantic import SecretStr

from imagerouter.errors import ConfigError
from imagerouter.provider_kit import (
    REDACTED,
    ErrorBody,
    accepted_for,
    deep_merge,
    json_or_none,
    load_yaml,
    make_redactor,
    parse_retry_after,
    parse_usd,
)

NOW = datetime(2026, 8, 21, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        (" 12 ", 12.0),
        ("Fri, 21 Aug 2026 12:00:30 GMT", 30.0),
        ("Fri, 21 Aug 2026 11:00:00 GMT", 0.0),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize(
    ("value", "scale", "usd"),
    [
        ("0.04", 1, Decimal("0.04")),
        (0.5, 1, Decimal("0.5")),
        (4, 100, Decimal("0.04")),
        ("12", 100_000_000, Decimal("1.2E-7")),
        ("-1", 1, None),
        ("NaN", 1, None),
        ("Infinity", 1, None),
        (True, 1, None),
        (None, 1, None),
        ("four cents", 1, None),
    ],
)
def test_usd(value: object, scale: int, usd: Decimal | None) -> None:
    assert parse_usd(value, scale=scale) == usd


def test_json_or_none() -> None:
    assert json_or_none(httpx.Response(200, json={"a": 1})) == {"a": 1}
    assert json_or_none(httpx.Response(200, content=b"<html>")) is None
    assert json_or_none(httpx.Response(200, content=b"")) is None


def test_deep_merge_merges_mappings_and_replaces_the_rest() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [3]}, "e": {"f": 2}})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": {"f": 2}}
    merged["a"]["b"] = 99
    assert base["a"]["b"] == 1  # nested mappings are copies


def test_load_yaml_reads_a_plugins_data_and_names_a_broken_file() -> None:
    data = load_yaml("imagerouter_runapi", "capabilities.yaml")
    assert isinstance(data, dict) and "models" in data
    with pytest.raises(ConfigError, match=r"no-such\.yaml"):
        load_yaml("imagerouter_runapi", "no-such.yaml")


def test_one_redaction_spelling() -> None:
    redact = make_redactor(SecretStr("sk-kit-secret-123"), None, "ab")
    text = redact("ab key sk-kit-secret-123 and Authorization: Bearer other-token-9")
    assert "sk-kit-secret-123" not in text and "other-token-9" not in text
    assert text.count(REDACTED) == 2 and REDACTED == "[redacted]"
    assert text.startswith("ab ")  # too short to be a secret


@pytest.mark.parametrize(
    ("call", "status", "accepted"),
    [
        ("get", 500, "yes"),
        ("get", None, "yes"),
        ("create", 500, "unknown"),
        ("create", None, "unknown"),
        ("create", 400, "no"),
        ("find", 500, "unknown"),
        ("upload", 500, "no"),
        ("check", None, "no"),
    ],
)
def test_accepted_depends_on_the_call(call: str, status: int | None, accepted: str) -> None:
    assert accepted_for(call, status) == accepted  # type: ignore[arg-type]


def test_a_create_5xx_that_says_nothing_was_created_is_no() -> None:
    assert accepted_for("create", 503, nothing_created=True) == "no"
    assert ErrorBody().fields == {}

"""API keys never reach a log line: the Redactor as text filter and as logging filter."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from imagerouter.redact import REDACTED, Redactor, default_redactor, install, uninstall

KEY = "rk-live-0123456789abcdef"
OTHER = "rf_secret_ZYXW9876"


def test_redacts_every_secret_occurrence() -> None:
    redactor = Redactor([KEY])
    redactor.add(SecretStr(OTHER))
    text = f"key={KEY}; again {KEY}, other {OTHER}"
    assert redactor.redact(text) == f"key={REDACTED}; again {REDACTED}, other {REDACTED}"


def test_short_secrets_are_ignored() -> None:
    redactor = Redactor(["abc", "", "  "])
    redactor.add(None)
    assert redactor.redact("abc abc the cat") == "abc abc the cat"
    assert "secrets=0" in repr(redactor)


def test_longer_secret_wins_over_its_prefix() -> None:
    redactor = Redactor(["abcd", "abcdefgh"])
    assert redactor.redact("xx abcdefgh yy") == f"xx {REDACTED} yy"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer unknown-token-1", f"Authorization: {REDACTED}"),
        (
            "headers {'authorization': 'Basic dXNlcjpw'}",
            f"headers {{'authorization': '{REDACTED}'}}",
        ),
        ('{"X-API-Key": "k-123456"}', f'{{"X-API-Key": "{REDACTED}"}}'),
        ("sent bearer abc.def-ghi to host", f"sent bearer {REDACTED} to host"),
        ("no secrets here", "no secrets here"),
        ("Authorization header missing", "Authorization header missing"),
    ],
)
def test_redacts_auth_header_values_it_was_not_told_about(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


@pytest.fixture
def installed() -> Iterator[Redactor]:
    redactor = install(("imagerouter", "httpx", "httpcore"))
    redactor.add(KEY)
    yield redactor
    uninstall(redactor)


def test_log_records_never_contain_a_secret(
    installed: Redactor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("imagerouter").info("key is %s", KEY)
    logging.getLogger("httpx").warning("headers: %r", {"Authorization": f"Bearer {KEY}"})
    # Child loggers, including one created only now, are covered too.
    logging.getLogger("httpcore.http11").debug(f"send_request_headers {KEY}")
    logging.getLogger("imagerouter.brand.new.child").error("retrying with %s", KEY)
    try:
        raise RuntimeError(f"boom {KEY}")
    except RuntimeError:
        logging.getLogger("imagerouter.router").exception("failed")
    assert len(caplog.records) == 5
    assert KEY not in caplog.text
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert REDACTED in caplog.records[0].getMessage()
    assert "boom [redacted]" in caplog.text
    # Records that hold no secret keep their lazy formatting.
    logging.getLogger("imagerouter").info("count %d", 3)
    assert caplog.records[-1].args == (3,)


def test_keys_added_after_install_are_redacted(
    installed: Redactor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    late = "late-added-key-555"
    installed.add(late)
    logging.getLogger("imagerouter.x").info("using %s", late)
    assert late not in caplog.text


def test_other_loggers_are_left_alone(
    installed: Redactor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    logging.getLogger("someone.else").info("value %s", KEY)
    assert KEY in caplog.text


def test_uninstall_restores_logging(caplog: pytest.LogCaptureFixture) -> None:
    factory = logging.getLogRecordFactory()
    redactor = install(("imagerouter",))
    redactor.add(KEY)
    uninstall(redactor)
    assert logging.getLogRecordFactory() is factory
    assert redactor not in logging.getLogger("imagerouter").filters
    caplog.set_level(logging.INFO)
    logging.getLogger("imagerouter.y").info("value %s", KEY)
    assert KEY in caplog.text


def test_filter_on_a_handler(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor([KEY])
    caplog.handler.addFilter(redactor)
    try:
        caplog.set_level(logging.INFO)
        logging.getLogger("anything").info("x %s y", KEY)
    finally:
        caplog.handler.removeFilter(redactor)
    assert caplog.records[0].getMessage() == f"x {REDACTED} y"


def test_install_defaults_to_the_process_wide_redactor(caplog: pytest.LogCaptureFixture) -> None:
    redactor = install()
    try:
        assert redactor is default_redactor()
        assert install() is redactor  # installing twice is harmless
        default_redactor().add("process-wide-key-77")
        caplog.set_level(logging.INFO)
        logging.getLogger("httpx").info("Authorization: process-wide-key-77")
        logging.getLogger("imagerouter.z").info("k=%s", "process-wide-key-77")
    finally:
        uninstall(redactor)
    assert "process-wide-key-77" not in caplog.text
    assert caplog.text.count(REDACTED) == 2

"""Keep API keys out of logs and messages: a redactor that is also a `logging.Filter`.

`Redactor.redact(text)` replaces every known secret, any `Authorization:` / `X-API-Key:`
header value or `Bearer` token, and the `user:password` of any URL, with `[redacted]`. As a
logging filter it rewrites each record before a handler formats it. `install()` attaches one
to our loggers and the HTTP libraries'.

A filter on a logger only sees records logged to that exact logger, not to its children
(`httpcore.http11` is a child of `httpcore`), so `install()` also attaches it to every
existing descendant and hooks the log record factory for descendants created later.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import SecretStr

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "Redactor",
    "default_redactor",
    "install",
    "uninstall",
]

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter "secrets" would redact ordinary words and digits

# `Authorization: Bearer abc`, `"x-api-key": "abc"`, `X-API-Key=abc` ... keep the name,
# replace the value up to the end of the quoted string, line, or next comma/brace.
_HEADER_VALUE = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key)(['\"]?\s*[:=]\s*['\"]?)"
    r"([^'\"\r\n,}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s'\",;}]+")
# `https://user:password@host/...`: the userinfo of any URL in the text.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")


class Redactor(logging.Filter):
    """Replaces secrets in text and in log records. Thread-safe; secrets can be added live."""

    def __init__(self, secrets: Iterable[str | SecretStr] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | SecretStr | None) -> None:
        """Remember one more secret; values shorter than 4 characters are ignored."""
        if secret is None:
            return
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        value = value.strip()
        if len(value) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            if value in self._secrets:
                return
            self._secrets.add(value)
            # Longest first, so a secret that contains another is replaced whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def redact(self, text: str) -> str:
        """`text` with every secret and auth header value replaced by `[redacted]`."""
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        text = _HEADER_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
        return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)

    def __repr__(self) -> str:
        return f"<Redactor secrets={len(self._secrets)}>"

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place so no handler ever sees a secret; never drops it."""
        redact_record(record, self.redact)
        return True


def redact_record(record: logging.LogRecord, redact: Callable[[str], str]) -> None:
    """Apply `redact` to a record's message, arguments and exception text."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: redact the parts we can see
        message = None
    if message is not None:
        cleaned = redact(message)
        if cleaned != message:
            # Freeze the formatted message: args can no longer re-insert a secret.
            record.msg, record.args = cleaned, None
    else:
        record.msg = redact(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg, redact) for arg in record.args)
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _redact_arg(arg: Any, redact: Callable[[str], str]) -> Any:
    return redact(arg) if isinstance(arg, str) else arg


# --- installing on loggers --------------------------------------------------------------

_DEFAULT = Redactor()


def default_redactor() -> Redactor:
    """The process-wide redactor `install()` uses by default. Add every key to it as soon as
    it is known (the CLI installs logging before any Router exists)."""
    return _DEFAULT


_install_lock = threading.Lock()
_installed: list[tuple[Redactor, tuple[str, ...]]] = []
_original_factory: Callable[..., logging.LogRecord] | None = None


def _belongs(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def _factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _original_factory is not None
    record = _original_factory(*args, **kwargs)
    for redactor, roots in list(_installed):
        if _belongs(record.name, roots):
            redactor.filter(record)
    return record


def install(
    logger_names: Iterable[str] = ("imagerouter", "httpx", "httpcore"),
    *,
    redactor: Redactor | None = None,
) -> Redactor:
    """Attach a redactor (by default `default_redactor()`) to these loggers and all their
    descendants; returns it. Call `.add(key)` for each key as it becomes known;
    `uninstall(redactor)` undoes it.
    """
    global _original_factory
    active = redactor if redactor is not None else _DEFAULT
    roots = tuple(logger_names)
    with _install_lock:
        for name in roots:
            logging.getLogger(name).addFilter(active)
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and _belongs(name, roots):
                logger.addFilter(active)
        if (active, roots) not in _installed:
            _installed.append((active, roots))
        if _original_factory is None:
            _original_factory = logging.getLogRecordFactory()
            logging.setLogRecordFactory(_factory)
    return active


def uninstall(redactor: Redactor) -> None:
    """Detach a redactor that `install()` attached."""
    global _original_factory
    with _install_lock:
        _installed[:] = [(r, roots) for r, roots in _installed if r is not redactor]
        for logger in list(logging.Logger.manager.loggerDict.values()):
            if isinstance(logger, logging.Logger):
                logger.removeFilter(redactor)
        logging.getLogger().removeFilter(redactor)
        if not _installed and _original_factory is not None:
            if logging.getLogRecordFactory() is _factory:
                logging.setLogRecordFactory(_original_factory)
            _original_factory = None

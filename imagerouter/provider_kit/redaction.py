"""One redaction spelling for every plugin: the core's `Redactor` (`[redacted]`)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import SecretStr

from imagerouter.redact import REDACTED, Redactor

__all__ = ["REDACTED", "make_redactor"]


def make_redactor(*secrets: str | SecretStr | None) -> Callable[[str], str]:
    """A function that replaces each of `secrets` (and any auth header or bearer token) in a
    text with `[redacted]`: what a client applies to every body and message it keeps."""
    redactor = Redactor()
    for secret in secrets:
        redactor.add(secret)
    return redactor.redact

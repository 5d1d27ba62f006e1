"""Callback (webhook) signatures: the hex HMAC-SHA256 of the raw body, checked in constant
time. The default scheme of `Provider.verify_callback`; a provider with another overrides it."""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = ["sign", "signature_matches"]


def sign(secret: str, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 of `body`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time check of a signature header (optionally `sha256=`-prefixed, any case);
    several comma-separated signatures (key rotation) are accepted if any matches."""
    if not header:
        return False
    expected = sign(secret, body).encode()
    matched = False
    for candidate in re.split(r"[,\s]+", header.strip()):
        value = candidate.strip().lower().removeprefix("sha256=")
        matched |= hmac.compare_digest(value.encode(), expected)
    return matched

"""Gateway keys: `Authorization: Bearer <key>` checked against `gateway.api_keys`.

Every configured key is compared (constant time, no early exit), so the time taken says
nothing about which key, or how much of one, matched. With no keys configured, every request
is allowed and `imagerouter serve` refuses to listen anywhere but loopback.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from pydantic import SecretStr

from .errors import ApiError

__all__ = ["KeyCheck", "is_loopback", "unauthorized"]


class KeyCheck:
    def __init__(self, keys: Sequence[SecretStr]) -> None:
        # Kept as SecretStr; bytes are made only for the comparison.
        self._keys = tuple(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        if not self._keys:
            return True
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        given = token.strip().encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key.get_secret_value().encode())
        return matched

    def __repr__(self) -> str:
        return f"KeyCheck(keys={len(self._keys)})"


def unauthorized() -> ApiError:
    # OpenAI's wording and code, so clients show their usual "invalid API key" message.
    return ApiError(
        401,
        "Incorrect API key provided. Send `Authorization: Bearer <key>` with one of the "
        "gateway's keys (gateway.api_keys).",
        code="invalid_api_key",
        headers={"www-authenticate": "Bearer"},
    )


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False

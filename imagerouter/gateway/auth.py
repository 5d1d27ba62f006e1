"""Gateway keys: `Authorization: Bearer <key>` checked against `gateway.api_keys`.

Every configured key is compared (constant time, no early exit), so the time taken says
nothing about which key, or how much of one, matched. With no keys configured, every request
is allowed and `imagerouter serve` refuses to listen anywhere but loopback. The key matched
is handed on by its configured name only (per-key budgets and rate limits, key_limits.py).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import ApiError

if TYPE_CHECKING:
    from ..config import GatewayKey

__all__ = ["KeyCheck", "is_loopback", "unauthorized"]


class KeyCheck:
    def __init__(self, keys: Sequence[GatewayKey]) -> None:
        # Kept as SecretStr inside each entry; bytes are made only for the comparison.
        self._keys = tuple(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def keys(self) -> tuple[GatewayKey, ...]:
        return self._keys

    def identify(self, authorization: str | None) -> GatewayKey | None:
        """The configured key the header carries, or None (no match, or no keys at all)."""
        if not self._keys:
            return None
        scheme, _, token = (authorization or "").strip().partition(" ")
        given = token.strip().encode()
        bearer = scheme.lower() == "bearer" and bool(given)
        found: GatewayKey | None = None
        for key in self._keys:
            # Every key is compared, even after a match; `&` / `|` never short-circuit.
            if hmac.compare_digest(given, key.get_secret_value().encode()) & bearer:
                found = key
        return found

    def allows(self, authorization: str | None) -> bool:
        return not self._keys or self.identify(authorization) is not None

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

"""Provider callbacks (webhooks): verified, deduplicated, and only ever a hint.

A callback never marks a job done. It says "task X changed"; the gateway then wakes the poll
loop of the job that owns task X (`Router.nudge`), which does its usual authenticated GET and
trusts only that. So a forged or replayed callback can at worst cause one early poll.

- Runflow signs callbacks when a secret is registered: `Runflow-Signature` is the lowercase
  hex HMAC-SHA256 of the raw body. With `gateway.runflow_callback_secret` set, a missing or
  wrong signature is a 401.
- RunAPI's signature scheme is not documented. With `gateway.runapi_callback_secret` set,
  the gateway accepts a hex HMAC-SHA256 of the raw body (optionally prefixed `sha256=`) in
  any of `X-RunAPI-Signature`, `RunAPI-Signature`, `X-Signature`, `X-Webhook-Signature`; if
  real deliveries fail that check, leave the secret unset (callbacks are hints anyway).
- Replays: the same provider, task id and status seen before is answered 200 and ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import GatewaySettings
from .errors import ApiError, bad_request

__all__ = [
    "MAX_CALLBACK_BYTES",
    "CallbackNote",
    "ReplayGuard",
    "read_note",
    "sign",
    "signature_matches",
    "verify_signature",
]

MAX_CALLBACK_BYTES = 1024 * 1024
RUNAPI_SIGNATURE_HEADERS = (
    "x-runapi-signature", "runapi-signature", "x-signature", "x-webhook-signature"
)
# Where each provider puts the task id (Runflow: `run_id`; RunAPI: the task JSON's `id`).
_TASK_ID_FIELDS = {"runflow": ("run_id", "id"), "runapi": ("id", "task_id")}
_GENERIC_TASK_ID_FIELDS = ("run_id", "task_id", "id")
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


@dataclass(frozen=True)
class CallbackNote:
    provider: str
    task_id: str
    status: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.provider, self.task_id, self.status)


def sign(secret: str, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 of `body` (Runflow's scheme)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time check of a signature header; several comma-separated signatures (key
    rotation) are accepted if any matches."""
    if not header:
        return False
    expected = sign(secret, body).encode()
    matched = False
    for candidate in re.split(r"[,\s]+", header.strip()):
        value = candidate.strip().lower().removeprefix("sha256=")
        matched |= hmac.compare_digest(value.encode(), expected)
    return matched


def verify_signature(
    provider: str, body: bytes, headers: Mapping[str, str], settings: GatewaySettings
) -> None:
    """Raise a 401 ApiError when a secret is configured and no signature matches it."""
    if provider == "runflow" and settings.runflow_callback_secret is not None:
        secret = settings.runflow_callback_secret.get_secret_value()
        if not signature_matches(secret, body, headers.get("runflow-signature")):
            raise _bad_signature(provider)
    elif provider == "runapi" and settings.runapi_callback_secret is not None:
        secret = settings.runapi_callback_secret.get_secret_value()
        given = [headers.get(name) for name in RUNAPI_SIGNATURE_HEADERS]
        if not any(signature_matches(secret, body, value) for value in given):
            raise _bad_signature(provider)


def _bad_signature(provider: str) -> ApiError:
    return ApiError(401, f"{provider} callback: missing or invalid signature",
                    code="invalid_signature")


def read_note(provider: str, body: bytes) -> CallbackNote:
    """The task id and status a callback names (400 when it names none)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the callback body is not JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the callback body must be a JSON object", code="invalid_json")
    task_id: str | None = None
    for name in _TASK_ID_FIELDS.get(provider, _GENERIC_TASK_ID_FIELDS):
        value = data.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            task_id = str(value)
            break
    if task_id is None or not _SAFE_ID.fullmatch(task_id):
        raise bad_request("the callback names no usable task id", param="id")
    status = data.get("status") or data.get("event") or ""
    return CallbackNote(provider, task_id, str(status)[:64])


class ReplayGuard:
    """Remembers the last `capacity` callbacks it let through."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def first_time(self, key: tuple[str, str, str]) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

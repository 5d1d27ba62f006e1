"""Provider callbacks (webhooks): verified, deduplicated, and only ever a hint.

A callback never marks a job done. It says "task X changed"; the gateway then wakes the poll
loop of the job that owns task X (`Router.nudge`), which does its usual authenticated GET and
trusts only that. So a forged or replayed callback can at worst cause one early poll.

- Signatures: with `gateway.callback_secrets.<provider>` set (or the older spelling
  `gateway.<provider>_callback_secret`), the provider's `verify_callback` must accept the raw
  body and headers, else the callback is a 401. The default scheme is a hex HMAC-SHA256 of
  the raw body in one of the provider's `callback_signature_headers`; each plugin documents
  its own.
- The task id is the one the provider's `callback_task_id` reads from the body.
- Replays: the same provider, task id and status seen before is answered 200 and ignored.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..provider_kit.signatures import sign, signature_matches
from .errors import ApiError, bad_request

if TYPE_CHECKING:
    from ..config import GatewaySettings
    from ..provider import Provider

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
# Used when the callback's provider object is not at hand (a bare name).
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


def verify_signature(
    provider: Provider, body: bytes, headers: Mapping[str, str], settings: GatewaySettings
) -> None:
    """Raise a 401 ApiError when a secret is configured and the provider rejects the
    signature (or there is none)."""
    secret = settings.callback_secrets.get(provider.name)
    if secret is None:
        return
    if not provider.verify_callback(body, headers, secret.get_secret_value()):
        raise _bad_signature(provider.name)


def _bad_signature(provider: str) -> ApiError:
    return ApiError(401, f"{provider} callback: missing or invalid signature",
                    code="invalid_signature")


def read_note(provider: Provider | str, body: bytes) -> CallbackNote:
    """The task id and status a callback names (400 when it names none)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the callback body is not JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the callback body must be a JSON object", code="invalid_json")
    if isinstance(provider, str):
        name, task_id = provider, _first_id(data, _GENERIC_TASK_ID_FIELDS)
    else:
        name, task_id = provider.name, provider.callback_task_id(data)
    if task_id is None or not _SAFE_ID.fullmatch(task_id):
        raise bad_request("the callback names no usable task id", param="id")
    status = data.get("status") or data.get("event") or ""
    return CallbackNote(name, task_id, str(status)[:64])


def _first_id(data: Mapping[str, Any], fields: tuple[str, ...]) -> str | None:
    for field in fields:
        value = data.get(field)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


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

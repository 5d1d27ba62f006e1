"""The provider kit: what every HTTP provider plugin needs, in one place in the core.

- the contract (`Provider`, `ProviderClient` and the values they pass), re-exported;
- `HttpClient`, a wire-client base: one attempt per call, transport errors mapped to
  "never sent" / "sent, outcome unknown", status-to-error mapping, key redaction;
- `batched_offer` / `split_images`, offers for n images in calls of a limited size;
- `provider_hook`, a plugin's `register_providers` in one line;
- parsing of Retry-After and USD amounts, loading a plugin's YAML data, one deep merge;
- `imagerouter.provider_kit.testing`: pytest helpers (a fake clock, loopback emulators).

A plugin imports from here and from `imagerouter.emulation` (the emulator base) only.
"""

from __future__ import annotations

from imagerouter.offers import Offer
from imagerouter.pricing import PriceTable
from imagerouter.provider import (
    FreeCheck,
    LoadedImage,
    Provider,
    ProviderClient,
    ProviderSettings,
    Submission,
    TaskSpec,
    TaskState,
    TaskStatus,
)

from .batching import batched_offer, split_images
from .client import HttpClient
from .data import deep_merge, load_yaml
from .errors import (
    NEVER_SENT,
    Call,
    ErrorBody,
    accepted_for,
    error_from_status,
    error_from_transport,
    malformed,
)
from .parsing import json_or_none, parse_retry_after, parse_usd, retry_after_of
from .redaction import REDACTED, make_redactor
from .registration import RegisterHook, provider_hook
from .sizes import snap_size

__all__ = [
    "NEVER_SENT",
    "REDACTED",
    "Call",
    "ErrorBody",
    "FreeCheck",
    "HttpClient",
    "LoadedImage",
    "Offer",
    "PriceTable",
    "Provider",
    "ProviderClient",
    "ProviderSettings",
    "RegisterHook",
    "Submission",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "accepted_for",
    "batched_offer",
    "deep_merge",
    "error_from_status",
    "error_from_transport",
    "json_or_none",
    "load_yaml",
    "make_redactor",
    "malformed",
    "parse_retry_after",
    "parse_usd",
    "provider_hook",
    "retry_after_of",
    "snap_size",
    "split_images",
]

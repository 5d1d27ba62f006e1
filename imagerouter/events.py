"""Events handed to the `on_attempt` and `on_result` hooks. They hold no secrets."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = ["AttemptEvent", "ResultEvent"]


@dataclass(frozen=True)
class AttemptEvent:
    """One attempt at one provider for one logical request."""

    request_id: str
    attempt: int
    provider: str
    model: str
    operation: str
    outcome: str  # submitted | served | failed | skipped
    accepted: str  # yes | no | unknown
    error_type: str | None = None
    error: str | None = None
    task_ids: tuple[str, ...] = ()
    quoted_usd: Decimal | None = None
    billed_usd: Decimal | None = None
    elapsed_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultEvent:
    """The final outcome of one logical request."""

    request_id: str
    ok: bool
    provider: str | None
    model: str | None
    attempts: int
    quoted_usd: Decimal | None = None
    billed_usd: Decimal | None = None
    images: int = 0
    error_type: str | None = None
    error: str | None = None
    elapsed_s: float | None = None

"""What a routed generation or edit hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from .pricing import quantize

__all__ = ["AttemptRecord", "GenerationResult", "SavedImage"]


@dataclass(frozen=True)
class SavedImage:
    """One image on disk, checked and hashed."""

    path: Path
    width: int
    height: int
    format: str  # png | jpeg | webp
    sha256: str
    source_url: str
    size_bytes: int
    converted_from: str | None = None  # the provider's format when we converted locally

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "sha256": self.sha256,
            "source_url": self.source_url,
            "size_bytes": self.size_bytes,
            "converted_from": self.converted_from,
        }


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt at one backend within a logical request."""

    provider: str
    model: str
    outcome: str  # served | failed
    accepted: str  # yes | no | unknown
    error: str | None = None
    error_type: str | None = None
    task_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "outcome": self.outcome,
            "accepted": self.accepted,
            "error": self.error,
            "error_type": self.error_type,
            "task_ids": list(self.task_ids),
        }


@dataclass(frozen=True)
class GenerationResult:
    """The outcome of `Router.generate` / `Router.edit`."""

    request_id: str
    provider: str
    model: str
    operation: str
    images: tuple[SavedImage, ...]
    cost_usd: Decimal
    billed_usd: Decimal | None
    task_ids: tuple[str, ...]
    attempts: tuple[AttemptRecord, ...]
    params: dict[str, Any] = field(default_factory=dict)
    tier: str | None = None
    notes: tuple[str, ...] = ()
    cached: bool = False  # answered from the result cache (imagerouter/cache.py) at $0

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "provider": self.provider,
            "model": self.model,
            "operation": self.operation,
            "tier": self.tier,
            "cost_usd": str(quantize(self.cost_usd)),
            "billed_usd": None if self.billed_usd is None else str(quantize(self.billed_usd)),
            "images": [image.to_dict() for image in self.images],
            "task_ids": list(self.task_ids),
            "attempts": [attempt.to_dict() for attempt in self.attempts],
            "params": self.params,
            "notes": list(self.notes),
            "cached": self.cached,
        }

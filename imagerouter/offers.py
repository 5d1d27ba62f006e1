"""Offers: what one provider can do with one request, and at what price."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .pricing import quantize

if TYPE_CHECKING:
    from .request import ImageRequest, ModelName, Operation, OutputFormat

__all__ = ["Offer"]


@dataclass(frozen=True)
class Offer:
    """One concrete way to serve a request on one provider, or why it cannot.

    `params` are the provider-native fields of one task (without prompt and inputs);
    `batches` gives the number of images each task or run produces, so n=10 on Runflow with a
    4-image cap is `(4, 4, 2)`. Prices are USD per image and in total, as Decimal.

    `delivered_size` is the (width, height) the backend will return (None: the backend
    chooses, e.g. size auto). `resize_to` is set by quoting, never by a provider: under the
    `exact` size policy, the size the router fits the downloaded image to (Pillow, LANCZOS)
    before saving it. The rules are in
    imagerouter/geometry.py (`size_verdict`), applied by quoting.
    """

    provider: str
    model: ModelName
    operation: Operation
    eligible: bool
    reason: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    batches: tuple[int, ...] = ()
    per_image_usd: Decimal | None = None
    total_usd: Decimal | None = None
    notes: tuple[str, ...] = ()
    convert_to: OutputFormat | None = None
    tier: str | None = None
    variant: int | None = None
    delivered_size: tuple[int, int] | None = None
    resize_to: tuple[int, int] | None = None
    request: ImageRequest | None = field(default=None, repr=False, compare=False)

    @classmethod
    def ineligible(
        cls,
        provider: str,
        request: ImageRequest,
        reason: str,
        **extra: Any,
    ) -> Offer:
        return cls(
            provider=provider,
            model=request.model,
            operation=request.operation,
            eligible=False,
            reason=reason,
            request=request,
            **extra,
        )

    @classmethod
    def priced(
        cls,
        provider: str,
        request: ImageRequest,
        *,
        params: Mapping[str, Any],
        batches: tuple[int, ...],
        per_image_usd: Decimal,
        notes: tuple[str, ...] = (),
        convert_to: OutputFormat | None = None,
        delivered_size: tuple[int, int] | None = None,
    ) -> Offer:
        """An eligible offer; the total is per-image price times images."""
        return cls(
            provider=provider,
            model=request.model,
            operation=request.operation,
            eligible=True,
            params=dict(params),
            batches=batches,
            per_image_usd=per_image_usd,
            total_usd=per_image_usd * sum(batches),
            notes=notes,
            convert_to=convert_to,
            delivered_size=delivered_size,
            request=request,
        )

    @property
    def tasks(self) -> int:
        """How many paid tasks (RunAPI) or runs (Runflow) serving this takes."""
        return len(self.batches)

    @property
    def images(self) -> int:
        return sum(self.batches)

    @property
    def backend(self) -> tuple[str, str, str]:
        """The health key: (provider, model, operation)."""
        return (self.provider, self.model, self.operation)

    def in_tier(self, tier: str | None, variant: int | None) -> Offer:
        return replace(self, tier=tier, variant=variant)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: money as decimal strings."""
        return {
            "provider": self.provider,
            "model": self.model,
            "operation": self.operation,
            "eligible": self.eligible,
            "per_image_usd": _usd(self.per_image_usd),
            "total_usd": _usd(self.total_usd),
            "tasks": self.tasks,
            "batches": list(self.batches),
            "params": dict(self.params),
            "reason": self.reason,
            "notes": list(self.notes),
            "convert_to": self.convert_to,
            "tier": self.tier,
            "variant": self.variant,
            "delivered_size": _size(self.delivered_size),
            "resize_to": _size(self.resize_to),
        }


def _size(size: tuple[int, int] | None) -> str | None:
    return None if size is None else f"{size[0]}x{size[1]}"


def _usd(amount: Decimal | None) -> str | None:
    return None if amount is None else str(quantize(amount))

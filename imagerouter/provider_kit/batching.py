"""Offers for backends that make several images per call, up to a limit.

A request for n images becomes calls of at most `per_call` each; the offer carries those
batches (the router runs one task per batch) and is priced per image. Every such plugin needs
the same split, the same note when it takes more than one call, and the same count parameter
set on the first call's params, so it is written once here.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from imagerouter.offers import Offer
from imagerouter.request import ImageRequest

__all__ = ["batched_offer", "split_images"]


def split_images(n: int, per_call: int) -> tuple[int, ...]:
    """n images in calls of at most `per_call`: 10 by 4 -> (4, 4, 2); a limit below 1 is 1."""
    per_call = max(1, per_call)
    full, rest = divmod(n, per_call)
    return (per_call,) * full + ((rest,) if rest else ())


def batched_offer(
    provider: str,
    request: ImageRequest,
    *,
    params: dict[str, Any],
    count_param: str,
    per_call: int,
    per_image_usd: Decimal,
    notes: Sequence[str] = (),
    split_note: str = "at most {per_call} images per call: {calls} calls",
    delivered_size: tuple[int, int] | None = None,
) -> Offer:
    """The eligible offer for `request` in calls of at most `per_call` images.

    `params[count_param]` is set to the first call's count (the router sets each task's own);
    `split_note` (formatted with `per_call` and `calls`) is added when it takes several calls.
    """
    batches = split_images(request.n, per_call)
    all_notes = list(notes)
    if len(batches) > 1:
        all_notes.append(split_note.format(per_call=batches[0], calls=len(batches)))
    params[count_param] = batches[0]
    return Offer.priced(
        provider,
        request,
        params=params,
        batches=batches,
        per_image_usd=per_image_usd,
        notes=tuple(all_notes),
        delivered_size=delivered_size,
    )

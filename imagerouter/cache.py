"""The opt-in result cache: a request identical to one already served is answered at $0 from
the images that request saved.

Turned on by `cache: {enabled: true, ttl: 7d}` in the config, or per request with `cache=True`
(`Router.generate(..., cache=False)` and the CLI's `--no-cache` turn it off). The key is a
canonical fingerprint of everything that shapes the image: the prompt, model, quality, the
normalized geometry, n, format, background, the tier (and its variants as configured) and the
bytes of every input image and mask. What only routes a request (providers, max_cost_usd) is
not part of it; a cached result from a provider the request excludes is a miss.

Entries live in the ledger (`result_cache`, migration m007) next to the request that paid for
them. A hit re-checks each image file's sha256 on disk: a file that went missing or changed is
a miss (the entry is dropped), never an error. A hit is recorded in the ledger as a served
request of its own with cost 0, `cached` = 1 and `cache_of` the paying request; images asked
for in another directory are copied there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .idempotency import _input_digest, result_from_dict
from .ledger_reports import iso
from .result import GenerationResult, SavedImage

if TYPE_CHECKING:
    from .execution import Progress
    from .ledger import Ledger
    from .provider import LoadedImage
    from .request import ImageRequest
    from .router import Router

__all__ = ["ResultCache", "cache_fingerprint", "parse_ttl", "route_with_cache"]

# Fields that choose a backend or guard spending but never change the picture.
_ROUTING_ONLY = frozenset(
    {"providers", "max_cost_usd", "allow_url_inputs", "tier", "images", "mask"}
)
_SIZE_FIELDS = frozenset({"size", "aspect_ratio", "resolution"})
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_ttl(value: Any) -> float:
    """`7d`, `12h`, `30m`, `45s`, `2w` or a number of seconds, as seconds."""
    if isinstance(value, bool):
        raise ValueError("use a duration such as 7d, 12h, 30m or a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    match = _TTL.match(str(value))
    if match is None:
        raise ValueError(f"{value!r} is not a duration; use e.g. 7d, 12h, 30m, 45s")
    return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]


def cache_fingerprint(
    request: ImageRequest,
    inputs: Sequence[LoadedImage | str] = (),
    mask: LoadedImage | str | None = None,
    *,
    tier: str | None = None,
    tier_variants: Any = None,
) -> str:
    """A hash of what shapes the image; geometry normalized, so `1024x1024` and `1:1` at 1k
    are one entry. `tier` is the effective tier (the request's or the config's default)."""
    # Every request field (new ones too) except what only routes it; the size in one form.
    fields = request.model_dump(mode="json", exclude=set(_ROUTING_ONLY | _SIZE_FIELDS))
    canonical = {
        "v": 1,
        "operation": request.operation,
        "fields": fields,
        "geometry": request.geometry.describe(),
        "tier": tier,
        "tier_variants": tier_variants,
        "images": [_input_digest(item) for item in inputs],
        "mask": None if mask is None else _input_digest(mask),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ResultCache:
    """The `result_cache` table of a ledger."""

    def __init__(
        self, ledger: Ledger, *, ttl_s: float, now: Callable[[], datetime] = _utc_now
    ) -> None:
        self._ledger = ledger
        self._ttl = timedelta(seconds=ttl_s)
        self._now = now

    def lookup(self, fingerprint: str) -> GenerationResult | None:
        """The live entry's result whose every image is still on disk unchanged, else None
        (a stale or broken entry is dropped)."""
        with self._ledger.reading() as conn:
            row = conn.execute(
                "SELECT result_json, expires_at FROM result_cache WHERE fingerprint = ?",
                (fingerprint,),
            ).fetchone()
        if row is None:
            return None
        result = None
        if row["expires_at"] >= iso(self._now()):
            try:
                result = result_from_dict(json.loads(row["result_json"]))
            except (ValueError, KeyError, TypeError):
                result = None
        if result is None or not result.images or not all(map(_intact, result.images)):
            self.forget(fingerprint)
            return None
        return result

    def store(self, fingerprint: str, result: GenerationResult) -> None:
        now = self._now()
        with self._ledger.transaction() as conn:
            conn.execute("DELETE FROM result_cache WHERE expires_at < ?", (iso(now),))
            conn.execute(
                "INSERT OR REPLACE INTO result_cache (fingerprint, request_id, result_json,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (
                    fingerprint,
                    result.request_id,
                    json.dumps(result.to_dict(), sort_keys=True),
                    iso(now),
                    iso(now + self._ttl),
                ),
            )

    def forget(self, fingerprint: str) -> None:
        with self._ledger.transaction() as conn:
            conn.execute("DELETE FROM result_cache WHERE fingerprint = ?", (fingerprint,))

    def record_hit(
        self,
        request: ImageRequest,
        hit: GenerationResult,
        *,
        paid_by: str,
        tier: str | None,
        output_dir: Path,
    ) -> None:
        """The ledger row of a request answered from the cache (cost 0, `cached` = 1)."""
        self._ledger.begin_request(
            hit.request_id,
            operation=request.operation,
            model=request.model,
            tier=tier,
            prompt=request.prompt,
            request=request.public_dict(),
            output_dir=str(output_dir),
            quoted_usd=Decimal(0),
        )
        self._ledger.end_request(
            hit.request_id,
            status="served",
            provider=hit.provider,
            model=hit.model,
            cost_usd=Decimal(0),
            billed_usd=Decimal(0),
            elapsed_s=0.0,
        )
        with self._ledger.transaction() as conn:
            conn.execute(
                "UPDATE requests SET cached = 1, cache_of = ? WHERE id = ?",
                (paid_by, hit.request_id),
            )


def _intact(image: SavedImage) -> bool:
    try:
        digest = hashlib.sha256()
        with image.path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == image.sha256


def _place(images: Sequence[SavedImage], output_dir: Path) -> tuple[SavedImage, ...]:
    """The cached images as files in `output_dir` (copied there when they live elsewhere)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    placed: list[SavedImage] = []
    for image in images:
        if image.path.parent.resolve() == output_dir.resolve():
            placed.append(image)
            continue
        target = output_dir / image.path.name
        number = 1
        while target.exists() and not _same(target, image):
            target = output_dir / f"{image.path.stem}-{number}{image.path.suffix}"
            number += 1
        if not target.exists():
            shutil.copyfile(image.path, target)
        placed.append(replace(image, path=target))
    return tuple(placed)


def _same(path: Path, image: SavedImage) -> bool:
    return _intact(replace(image, path=path))


def cache_wanted(router: Router, use_cache: bool | None) -> bool:
    if router.ledger is None:
        return False
    return router.config.cache.enabled if use_cache is None else bool(use_cache)


async def route_with_cache(
    router: Router,
    request: ImageRequest,
    inputs: Sequence[LoadedImage | str],
    mask: LoadedImage | str | None,
    output_dir: Path,
    progress: Callable[[Progress], None] | None = None,
    *,
    request_id: str | None = None,
    use_cache: bool | None = None,
) -> GenerationResult:
    """`route_request`, answered from the cache when it is on and holds this request."""
    from .routing import new_request_id, route_request

    if not cache_wanted(router, use_cache):
        return await route_request(
            router.deps, request, inputs, mask, output_dir, progress, request_id=request_id
        )
    assert router.ledger is not None
    cache = ResultCache(router.ledger, ttl_s=router.config.cache.ttl)
    tier = request.tier or router.config.default_tier
    variants = None
    if tier is not None and tier in router.config.tiers:
        variants = [v.model_dump(mode="json") for v in router.config.tiers[tier]]
    key = cache_fingerprint(request, inputs, mask, tier=tier, tier_variants=variants)
    hit = await asyncio.to_thread(cache.lookup, key)
    if hit is not None and (request.providers is None or hit.provider in request.providers):
        images = await asyncio.to_thread(_place, hit.images, output_dir)
        answered = GenerationResult(
            request_id=request_id or new_request_id(),
            provider=hit.provider,
            model=hit.model,
            operation=hit.operation,
            images=images,
            cost_usd=Decimal(0),
            billed_usd=Decimal(0),
            task_ids=(),
            attempts=(),
            params=hit.params,
            tier=hit.tier,
            notes=(f"answered from the cache: request {hit.request_id}",),
            cached=True,
        )
        await asyncio.to_thread(
            cache.record_hit,
            request,
            answered,
            paid_by=hit.request_id,
            tier=tier,
            output_dir=output_dir,
        )
        return answered
    result = await route_request(
        router.deps, request, inputs, mask, output_dir, progress, request_id=request_id
    )
    await asyncio.to_thread(cache.store, key, result)
    return result

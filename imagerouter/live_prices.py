"""Live prices: what the providers publish now, stored dated, used by quotes and routing.

`refresh()` asks each provider plugin for its machine-readable prices (the optional
`Provider.fetch_prices` hook: one free GET, never a job) and stores each answer as a dated
JSON snapshot under `<prices dir>/<provider>/<UTC timestamp>.json`. `base_table()` is the
table a Catalog starts from: the shipped table with the newest snapshot merged in leaf by leaf
(the user's `providers.<name>.prices` are merged on top of that, so they still win).
`drift()` lists what the newest snapshot changed against the shipped table.

Snapshots are plain files so a user can read, diff or delete them; a broken one is logged and
ignored (quoting falls back to the shipped table), never an error on the request path.
Emulated runs (a ledger named `*.emulated.db`, see emulated.py) keep their own directory,
`prices.emulated`, so prices an emulator served never reach a real quote.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .paths import EMULATED_SUFFIX, home_path
from .pricing import PriceTable, money

if TYPE_CHECKING:
    from .config import Config
    from .provider import Provider

__all__ = [
    "DriftRow",
    "FetchedPrices",
    "RefreshResult",
    "Snapshot",
    "base_table",
    "drift",
    "is_older_than",
    "latest_snapshot",
    "prices_dir",
    "refresh",
]

log = logging.getLogger("imagerouter.live_prices")

_DIR_NAME = "prices"


@dataclass(frozen=True)
class FetchedPrices:
    """What a plugin's `fetch_prices` hands back: prices in its shipped table's shape."""

    prices: Mapping[str, Any]  # model -> operation -> dims -> USD (Decimal or decimal string)
    source: str  # the URL read
    as_of: str = ""  # the provider's own timestamp, when it gives one
    etag: str | None = None
    not_modified: bool = False  # a 304: the last snapshot's prices still stand
    # Published prices that could not be mapped onto the table (with why), for the report.
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """One stored refresh of one provider."""

    provider: str
    fetched_at: str  # ISO 8601 UTC
    source: str
    as_of: str
    etag: str | None
    prices: Mapping[str, Any]  # normalized: leaves are Decimal
    skipped: tuple[str, ...]
    path: Path

    @classmethod
    def read(cls, path: Path) -> Snapshot:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("prices"), dict):
            raise ValueError("not a price snapshot (no 'prices' mapping)")
        # Normalizing through PriceTable checks every amount.
        table = PriceTable.from_mapping({"provider": data.get("provider", ""), **data})
        return cls(
            provider=str(data.get("provider", "")),
            fetched_at=str(data.get("fetched_at", "")),
            source=str(data.get("source", "")),
            as_of=str(data.get("as_of", "")),
            etag=data.get("etag") if isinstance(data.get("etag"), str) else None,
            prices=table.prices,
            skipped=tuple(str(item) for item in data.get("skipped", ())),
            path=path,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "fetched_at": self.fetched_at,
            "source": self.source,
            "as_of": self.as_of,
            "etag": self.etag,
            "skipped": list(self.skipped),
            "prices": _jsonable(self.prices),
        }


@dataclass(frozen=True)
class RefreshResult:
    """One provider's refresh: `updated`, `unchanged` (a 304 or the same prices),
    `unpublished` (no machine-readable prices), `disabled`, or `failed`."""

    provider: str
    status: str
    detail: str = ""
    path: Path | None = None
    # Leaves whose price differs from the previous snapshot (the first: the shipped table).
    changed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "status": self.status,
            "detail": self.detail,
            "path": str(self.path) if self.path else None,
            "changed": list(self.changed),
            "skipped": list(self.skipped),
        }


@dataclass(frozen=True)
class DriftRow:
    """One price that differs between the shipped table and the newest snapshot."""

    provider: str
    path: str  # model.operation.dims
    shipped_usd: Decimal | None  # None: the snapshot has a price the table lacks
    live_usd: Decimal | None  # None: the snapshot lacks it (the shipped price stays in use)
    fetched_at: str

    @property
    def change_usd(self) -> Decimal | None:
        if self.shipped_usd is None or self.live_usd is None:
            return None
        return self.live_usd - self.shipped_usd

    def to_dict(self) -> dict[str, Any]:
        change = self.change_usd
        return {
            "provider": self.provider,
            "path": self.path,
            "shipped_usd": _text(self.shipped_usd),
            "live_usd": _text(self.live_usd),
            "change_usd": _text(change),
            "fetched_at": self.fetched_at,
        }


def prices_dir(config: Config) -> Path:
    """Where snapshots live: `prices.dir`, else `<home>/prices` (`prices.emulated` when the
    config's ledger is an emulated one, so emulated and real prices never mix)."""
    configured = config.prices.dir
    if configured is not None:
        return configured
    ledger = config.ledger.path
    emulated = ledger is not None and ledger.stem.endswith(EMULATED_SUFFIX)
    # home_path(), not imagerouter_home(): loading a config must not create the home.
    return home_path() / (_DIR_NAME + (EMULATED_SUFFIX if emulated else ""))


def latest_snapshot(config: Config, provider: str) -> Snapshot | None:
    """The newest readable snapshot of `provider`, or None. A broken file is logged and the
    next newest is tried."""
    folder = prices_dir(config) / provider
    if not folder.is_dir():
        return None
    # Names are UTC timestamps of one fixed width: the lexical order is the time order.
    for path in sorted(folder.glob("*.json"), reverse=True):
        try:
            return Snapshot.read(path)
        except (OSError, ValueError) as exc:
            log.warning("ignoring the price snapshot %s: %s", path, exc)
    return None


def base_table(provider: Provider, config: Config) -> PriceTable:
    """The shipped table with the newest live snapshot merged in (when `prices.live`)."""
    shipped = provider.price_table()
    if not config.prices.live:
        return shipped
    snapshot = latest_snapshot(config, provider.name)
    if snapshot is None or is_older_than(snapshot, shipped):
        return shipped
    return shipped.with_live(snapshot.prices, snapshot.fetched_at)


def is_older_than(snapshot: Snapshot, shipped: PriceTable) -> bool:
    """Whether the snapshot was fetched before the shipped table was read (an upgraded plugin
    ships newer prices than an old refresh): then the shipped table is used. Both are ISO
    dates, so they compare as text."""
    return bool(shipped.read_on) and snapshot.fetched_at[:10] < shipped.read_on[:10]


async def refresh(
    providers: Mapping[str, Provider],
    config: Config,
    *,
    http: httpx.AsyncClient | None = None,
    now: Callable[[], datetime] | None = None,
) -> list[RefreshResult]:
    """Fetch and store every enabled provider's published prices. A provider that fails is
    reported (status `failed`), never raised: the others still refresh."""
    clock = now or (lambda: datetime.now(UTC))
    owned = http is None
    client = http or httpx.AsyncClient(follow_redirects=False)
    results = []
    try:
        for name in sorted(providers):
            results.append(await _refresh_one(providers[name], config, client, clock))
    finally:
        if owned:
            await client.aclose()
    return results


async def _refresh_one(
    provider: Provider,
    config: Config,
    http: httpx.AsyncClient,
    clock: Callable[[], datetime],
) -> RefreshResult:
    name = provider.name
    settings = config.provider_settings(name)
    if not settings.enabled:
        return RefreshResult(name, "disabled", "disabled in the config")
    previous = latest_snapshot(config, name)
    try:
        fetched = await provider.fetch_prices(
            settings, http, etag=previous.etag if previous else None
        )
    except Exception as exc:  # a plugin or network failure must not stop the other refreshes
        log.info("price refresh of %s failed", name, exc_info=True)
        return RefreshResult(name, "failed", f"{type(exc).__name__}: {exc}")
    if fetched is None:
        return RefreshResult(name, "unpublished", "publishes no machine-readable prices")
    if fetched.not_modified:
        if previous is None:
            return RefreshResult(name, "failed", "answered 304 but no snapshot is stored")
        prices: Mapping[str, Any] = previous.prices
    else:
        try:
            prices = PriceTable(provider=name, prices={}).with_live(fetched.prices, "").prices
        except ValueError as exc:
            return RefreshResult(name, "failed", f"unusable prices: {exc}")
    snapshot = Snapshot(
        provider=name,
        fetched_at=clock().astimezone(UTC).isoformat(timespec="microseconds"),
        source=fetched.source,
        as_of=fetched.as_of or (previous.as_of if previous and fetched.not_modified else ""),
        etag=fetched.etag or (previous.etag if previous else None),
        prices=prices,
        skipped=fetched.skipped,
        path=Path(),
    )
    path = _store(config, snapshot, clock())
    # Against the last snapshot; the first refresh is compared with the shipped table.
    changed = _changed(previous.prices if previous else provider.price_table().prices, prices)
    status = "updated" if changed or previous is None else "unchanged"
    detail = "not modified (304)" if fetched.not_modified else f"{len(_leaves(prices))} prices"
    return RefreshResult(name, status, detail, path, changed, fetched.skipped)


def _store(config: Config, snapshot: Snapshot, moment: datetime) -> Path:
    folder = prices_dir(config) / snapshot.provider
    folder.mkdir(parents=True, exist_ok=True)
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    # Written whole, then renamed: a reader never sees half a snapshot.
    tmp.write_text(json.dumps(snapshot.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def drift(providers: Mapping[str, Provider], config: Config) -> list[DriftRow]:
    """Every price the newest snapshot of each provider changed against its shipped table."""
    rows: list[DriftRow] = []
    for name in sorted(providers):
        snapshot = latest_snapshot(config, name)
        if snapshot is None:
            continue
        table = providers[name].price_table()
        if is_older_than(snapshot, table):
            continue  # not in use: the shipped table is newer
        shipped = dict(table.rows())
        live = _leaves(snapshot.prices)
        for path in sorted(set(shipped) | set(live)):
            old, new = shipped.get(path), live.get(path)
            if new is None:
                continue  # not published live: the shipped price is what quotes use
            if old is None or old != new:
                rows.append(DriftRow(name, path, old, new, snapshot.fetched_at))
    return rows


def _changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[str, ...]:
    old, new = _leaves(before), _leaves(after)
    return tuple(sorted(path for path in set(old) | set(new) if old.get(path) != new.get(path)))


def _leaves(node: Any, prefix: str = "") -> dict[str, Decimal]:
    if isinstance(node, Mapping):
        out: dict[str, Decimal] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: money(node)}


def _jsonable(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _jsonable(v) for k, v in node.items()}
    return str(node)


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)

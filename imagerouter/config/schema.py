"""The schema: `Config`, the whole configuration (one frozen model of every section), its
checks against the installed providers, and the rules that span fields (`check_semantics`),
each reported at the key to fix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, PrivateAttr, SecretStr

from ..errors import ConfigError, RequestValidationError
from ..pricing import PriceTable
from ..provider import ProviderSettings
from ..request import ImageRequest
from .gateway_section import GatewaySettings
from .sections import (
    BudgetSettings,
    CacheSettings,
    DownloadSettings,
    HealthSettings,
    LedgerSettings,
    McpSettings,
    OutputSettings,
    PricesSettings,
    RoutingSettings,
    Section,
    SharedSettings,
    TierVariant,
)
from .yamlsource import child_path, item_path, nearest_line

if TYPE_CHECKING:
    from ..provider import Provider
    from ..quoting import Entry

__all__ = ["SECTIONS", "Config", "check_semantics"]


class Config(Section):
    """The whole configuration. Build it with `load_config`; it never changes afterwards."""

    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    tiers: dict[str, list[TierVariant]] = Field(default_factory=dict)
    default_tier: str | None = None
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    downloads: DownloadSettings = Field(default_factory=DownloadSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    prices: PricesSettings = Field(default_factory=PricesSettings)
    mcp: McpSettings = Field(default_factory=McpSettings)
    shared: SharedSettings = Field(default_factory=SharedSettings)
    source: str | None = Field(default=None, exclude=True)

    _lines: dict[str, int] = PrivateAttr(default_factory=dict)
    # Sections taken from the built-in defaults: they name both shipped providers, which need
    # not be installed, so check_providers leaves them alone.
    _builtin_sections: frozenset[str] = PrivateAttr(default=frozenset())

    def provider_settings(self, name: str) -> ProviderSettings:
        """`providers.<name>` as configured, or the defaults (enabled, key from its env var)."""
        settings = self.providers.get(name)
        return settings if settings is not None else ProviderSettings()

    def check_providers(self, known: Collection[str]) -> None:
        """ConfigError for a provider name no installed plugin registers, or a bad default_tier."""
        names = ", ".join(sorted(known)) or "none installed"
        if "providers" not in self._builtin_sections:
            for name in self.providers:
                if name not in known:
                    raise self.error(
                        f"providers.{name}", f"{name!r} is not a known provider; known: {names}"
                    )
        if "tiers" not in self._builtin_sections:
            for tier, variants in self.tiers.items():
                for index, variant in enumerate(variants):
                    if variant.provider not in known:
                        raise self.error(
                            f"{item_path(child_path('tiers', tier), index)}.provider",
                            f"{variant.provider!r} is not a known provider; known: {names}",
                        )
            if isinstance(known, Mapping):
                self._check_tier_sizes(known)
        self._check_default_tier()

    def _check_tier_sizes(self, providers: Mapping[str, Provider]) -> None:
        """A variant's size must be one its provider can make with its model. The provider is
        asked (`offers()` is pure) with and without the variant's size fields, so a variant
        is refused here only when its size is what rules it out."""
        from ..quoting import Catalog  # quoting reads Config: imported late, not at load

        catalog = Catalog.build(providers, self)
        for tier, variants in self.tiers.items():
            for index, variant in enumerate(variants):
                entry = catalog.entries.get(variant.provider)
                fields = variant.overrides()
                sized = [key for key in ("size", "aspect_ratio", "resolution") if key in fields]
                if entry is None or not sized:
                    continue
                refusal = _refusal(entry, fields)
                rest = {key: value for key, value in fields.items() if key not in sized}
                if refusal is None or _refusal(entry, rest) is not None:
                    continue
                raise self.error(
                    f"{item_path(child_path('tiers', tier), index)}.{sized[0]}",
                    f"{variant.provider} cannot make this size with {variant.model}: {refusal}",
                )

    def locate(self, key_path: str) -> int | None:
        """The line of a key path such as `tiers.draft[0].provider`, when it came from a file."""
        return self._lines.get(key_path)

    def error(self, key_path: str, message: str) -> ConfigError:
        """A ConfigError pointing at `key_path` (or its nearest located parent)."""
        return ConfigError(
            message, file=self.source, line=nearest_line(self._lines, key_path), key=key_path
        )

    def fingerprint(self) -> str:
        """A stable short hash of every setting; an API key enters only as its own hash."""
        data = self.model_dump(mode="json")
        for name, settings in self.providers.items():
            data["providers"][name]["api_key"] = _key_digest(settings.api_key)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def public_dict(self) -> dict[str, Any]:
        """A JSON-safe dump; API keys read `**********`. Tier variants list only what they set."""
        data = self.model_dump(mode="json")
        data["tiers"] = {
            name: [variant.model_dump(mode="json", exclude_none=True) for variant in variants]
            for name, variants in self.tiers.items()
        }
        return data

    def _check_default_tier(self) -> None:
        if self.default_tier is not None and self.default_tier not in self.tiers:
            tiers = ", ".join(sorted(self.tiers)) or "none are defined"
            raise self.error(
                "default_tier", f"{self.default_tier!r} is not one of the tiers: {tiers}"
            )


# The top-level keys, as the schema declares them (one place to add a section).
SECTIONS = tuple(name for name in Config.model_fields if name != "source")


def _refusal(entry: Entry, fields: Mapping[str, Any]) -> str | None:
    """Why `entry`'s provider offers nothing eligible for a request of these fields (None:
    it can serve it, or the question cannot be answered here)."""
    try:
        request = ImageRequest.build(prompt="tier check", **fields)
        offers = entry.provider.offers(
            request, prices=entry.prices, capabilities=entry.capabilities
        )
    except Exception:  # a plugin error is reported when it is used, not at load
        return None
    if not offers or any(offer.eligible for offer in offers):
        return None
    return offers[0].reason or "no offer"


def _key_digest(key: SecretStr | None) -> str | None:
    if key is None:
        return None
    digest = hashlib.sha256(b"imagerouter api key\0" + key.get_secret_value().encode())
    return "sha256:" + digest.hexdigest()[:16]


def check_semantics(config: Config) -> None:
    """Rules that span fields, each reported at the key to fix."""
    for name, settings in config.providers.items():
        try:
            PriceTable(provider=name, prices={}).with_overrides(settings.prices)
        except ValueError as exc:
            where, _, message = str(exc).partition(": ")
            raise config.error(f"providers.{name}.{where}", message) from None
    for tier, variants in config.tiers.items():
        tier_path = child_path("tiers", tier)
        if not variants:
            raise config.error(tier_path, "a tier must list at least one variant")
        for index, variant in enumerate(variants):
            try:
                ImageRequest.build(prompt="tier check", **variant.overrides())
            except RequestValidationError as exc:
                key = f"{item_path(tier_path, index)}.{exc.field}"
                raise config.error(key, exc.detail) from None
    health = config.health
    if health.max_ejection_s < health.base_ejection_s:
        raise config.error(
            "health.max_ejection_s",
            f"must be at least base_ejection_s ({health.base_ejection_s:g})",
        )
    config._check_default_tier()

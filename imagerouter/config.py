"""The configuration: a YAML file (or a dict) validated into one frozen `Config`.

Search order: an explicit path, then `$IMAGEROUTER_CONFIG`, then `./imagerouter.yaml`, then the
built-in defaults (`imagerouter/defaults.yaml`). A section a file leaves out comes from the
built-in defaults, so a three-line file still has the `draft`/`standard`/`premium` tiers.

Every mistake is one `ConfigError` that reads `file:line: key.path: what is wrong`. A string
value that is exactly `${NAME}` is read from the environment after parsing; an unset variable
is an error, except for `providers.<name>.api_key`, which stays lazy so that quoting and
`--emulate` work without keys (the key is looked up again when the provider is used).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Collection, Mapping
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError
from pydantic import field_serializer as _field_serializer
from pydantic import field_validator as _field_validator
from pydantic import model_validator as _model_validator

from .bounded import FileReadError, read_bounded
from .errors import ConfigError, RequestValidationError
from .geometry import Resolution
from .pricing import PriceTable
from .provider import ProviderSettings
from .request import MODELS, Background, ImageRequest, ModelName, OutputFormat, Quality
from .yamlsource import (
    MAX_CONFIG_BYTES,
    child_path,
    fold_callback_secrets,
    item_path,
    nearest_line,
    parse_yaml,
    problem_from_validation_error,
)

if TYPE_CHECKING:
    from .provider import Provider
    from .quoting import Entry

__all__ = [
    "BUILTIN_SOURCE",
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_NAME",
    "DICT_SOURCE",
    "BudgetSettings",
    "Config",
    "DownloadSettings",
    "GatewayKey",
    "GatewaySettings",
    "HealthSettings",
    "LedgerSettings",
    "McpSettings",
    "OutputSettings",
    "PricesSettings",
    "RoutingSettings",
    "SharedSettings",
    "TierVariant",
    "default_config",
    "find_config_path",
    "load_config",
]

logger = logging.getLogger(__name__)

CONFIG_ENV_VAR = "IMAGEROUTER_CONFIG"
DEFAULT_CONFIG_NAME = "imagerouter.yaml"
BUILTIN_SOURCE = "<built-in defaults>"
DICT_SOURCE = "<dict>"

# Only a whole value is a reference: "a-${X}" stays as typed (documented in configuration.md).
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TierVariant(_Section):
    """One interchangeable way to serve a tier: a provider, a model and optional overrides
    that replace the request's own values (a size field replaces the request's whole size)."""

    provider: str
    model: ModelName
    quality: Quality | None = None
    resolution: Resolution | None = None
    size: str | None = None
    aspect_ratio: str | None = None
    output_format: OutputFormat | None = None
    background: Background | None = None

    @_field_validator("model")
    @classmethod
    def _declared_model(cls, value: str) -> str:
        # The families the provider plugins declare (imagerouter/model_families.py).
        if value not in MODELS:
            raise ValueError(f"{value!r} is not one of {', '.join(MODELS)}")
        return value

    def overrides(self) -> dict[str, Any]:
        """The request fields this variant sets (for `ImageRequest.with_overrides`)."""
        return self.model_dump(exclude={"provider"}, exclude_none=True)

    @property
    def label(self) -> str:
        extras = " ".join(str(v) for k, v in self.overrides().items() if k != "model")
        return f"{self.provider}/{self.model}" + (f" {extras}" if extras else "")


class RoutingSettings(_Section):
    strategy: Literal["cheapest", "priority", "fastest"] = "cheapest"
    max_attempts: int = Field(default=3, ge=1)
    on_unknown_submission: Literal["reconcile", "fail", "failover"] = "reconcile"
    on_deadline: Literal["wait", "fail", "hedge"] = "fail"
    resume_on_start: bool = False
    # What a requested WxH promises when the request does not say (issue 12; docs).
    size_policy: Literal["exact", "at_least", "nearest"] = "exact"


class BudgetSettings(_Section):
    daily_usd: Decimal | None = Field(default=None, ge=0)
    monthly_usd: Decimal | None = Field(default=None, ge=0)
    total_usd: Decimal | None = Field(default=None, ge=0)


class HealthSettings(_Section):
    failure_threshold: int = Field(default=3, ge=1)
    base_ejection_s: float = Field(default=30.0, gt=0)
    max_ejection_s: float = Field(default=300.0, gt=0)
    jitter: float = Field(default=0.1, ge=0, le=1)
    rate_limit_cooldown_s: float = Field(default=10.0, gt=0)
    out_of_credit_s: float = Field(default=3600.0, gt=0)
    max_rate_limit_s: float = Field(default=300.0, ge=0)
    trial_timeout_s: float = Field(default=1200.0, gt=0)
    free_checks: bool = False


def _expand_user(value: Path | None) -> Path | None:
    return value.expanduser() if value is not None else None


class CacheSettings(_Section):
    """The opt-in result cache (imagerouter/cache.py): an identical request is answered from
    the ledger's saved images at $0 for `ttl` (e.g. 7d, 12h, 30m, 45s or seconds)."""

    enabled: bool = False
    ttl: float = Field(default=7 * 86400.0, gt=0)

    @_field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> Any:
        from .cache import parse_ttl

        return parse_ttl(value)


class PricesSettings(_Section):
    """Live prices (imagerouter/live_prices.py, docs/prices.md): `live` uses the newest
    snapshot `imagerouter prices refresh` stored under `dir` (None: <imagerouter home>/prices)
    in quotes and routing; the user's `providers.<name>.prices` still win over it."""

    live: bool = True
    dir: Path | None = None

    _expand = _field_validator("dir")(_expand_user)


class LedgerSettings(_Section):
    enabled: bool = True
    path: Path | None = None  # None: imagerouter.paths.default_ledger_path()
    # sqlite:///path or postgresql://... (imagerouter.stores); None: the `path` file. Keep a
    # password out of it: libpq reads PGPASSWORD or ~/.pgpass.
    url: str | None = None

    _expand = _field_validator("path")(_expand_user)

    @_field_validator("url")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("sqlite://", "postgresql://", "postgres://")
        ):
            raise ValueError("use sqlite:///path or postgresql://user@host/db")
        return value

    @_field_serializer("url", when_used="json")
    def _without_password(self, value: str | None) -> str | None:
        from .stores import redact_url  # `config check --json` must not print a password

        return None if value is None else redact_url(value)


class OutputSettings(_Section):
    dir: Path = Path("images")

    _expand = _field_validator("dir")(_expand_user)


class DownloadSettings(_Section):
    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_pixels: int = Field(default=64_000_000, gt=0)
    # Hosts result images may come from besides each provider's documented ones (`*.cdn.com`
    # for subdomains). Private, loopback and link-local addresses are refused all the same.
    allowed_hosts: list[str] = Field(default_factory=list)

    @_field_validator("allowed_hosts")
    @classmethod
    def _plain_hosts(cls, value: list[str]) -> list[str]:
        out = []
        for host in value:
            host = host.strip().lower().rstrip(".")
            bare = host.removeprefix("*.")
            if not bare or "*" in bare or any(c in bare for c in "/:?#@ []"):
                raise ValueError(
                    f"{host!r} is not a host name: use e.g. cdn.example.com or *.example.com "
                    "(no scheme, port or path)"
                )
            out.append(host)
        return out


_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class GatewayKey(_Section):
    """One gateway key and its limits (gateway/key_limits.py). A plain-string entry of
    `gateway.api_keys` is a key with no limits, named `key-<position>` (1-based): a name is
    never derived from the secret, since even a hash prefix of it would leak into reports."""

    key: SecretStr
    name: str
    daily_usd: Decimal | None = Field(default=None, ge=0)
    monthly_usd: Decimal | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=1)  # image requests per minute (sliding window)

    def get_secret_value(self) -> str:
        """The key itself, as on a SecretStr (so a key entry can stand where one did)."""
        return self.key.get_secret_value()

    @_field_validator("key", mode="before")
    @classmethod
    def _key_is_text(cls, value: Any) -> Any:
        if not isinstance(value, str | SecretStr):
            raise ValueError("must be text")  # never echo what may be a key
        return value

    @_field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _KEY_NAME.fullmatch(value):
            raise ValueError("a key name is 1-64 letters, digits, '.', '_' or '-'")
        return value


class GatewaySettings(_Section):
    """`imagerouter serve`: the OpenAI-compatible gateway (docs/gateway.md)."""

    # Bearer keys clients must send. Empty: no auth, and `serve` binds to loopback only.
    # Entries: a key (named key-1, key-2, ... by position) or {key, name, daily_usd,
    # monthly_usd, rpm} (GatewayKey).
    api_keys: list[GatewayKey] = Field(default_factory=list)
    # Where providers can reach this gateway; only then do creates carry a callback_url.
    public_base_url: str | None = None
    # Callback (webhook) signing secrets by provider name: `{<provider>: secret}`. A key
    # `<provider>_callback_secret: secret` (the older spelling) is folded in here.
    callback_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=60 * 1024 * 1024, gt=0)
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    response_format_default: Literal["b64_json", "url"] = "b64_json"
    output_dir: Path | None = None  # None: output.dir
    # Browser origins (`https://app.example.com`) allowed to call the gateway cross-origin;
    # any other Origin is refused (403), since loopback is reachable from every web page.
    cors_origins: list[str] = Field(default_factory=list)
    # Host header values accepted besides the address served (DNS rebinding guard):
    # `img.example.com`, `img.example.com:443`, `*.example.com`, or `*` for any.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Request body bytes held at once across all requests; past it new bodies get a 503.
    max_inflight_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)  # connection open -> headers complete
    body_timeout_s: float = Field(default=60.0, gt=0)  # headers complete -> body complete
    # `response_format=url`: signed URLs valid this long; signed with `url_secret`, or with a
    # secret generated once under the imagerouter home (gateway/signed_urls.py).
    url_ttl_s: int = Field(default=3600, gt=0)
    url_secret: SecretStr | None = None
    # Extra model names clients may send, each mapped to a model or tier: `{my-model: gpt-image-2}`.
    model_aliases: dict[str, str] = Field(default_factory=dict)
    # Seconds between the sweeper's passes (collects dead processes' paid jobs, resume.py);
    # its fleet lease (shared.url) lapses after three of them once its holder dies.
    sweep_interval_s: float = Field(default=60.0, gt=0)

    _expand = _field_validator("output_dir")(_expand_user)

    @_field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        # `api_keys: ${GATEWAY_KEYS}` may hold several keys separated by commas.
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            return value
        entries: list[Any] = []
        for position, entry in enumerate(value, start=1):
            if isinstance(entry, str | SecretStr):
                entry = {"key": entry}
            elif isinstance(entry, GatewayKey):
                entry = entry.model_dump()
            elif not isinstance(entry, Mapping):
                # never echo what may be a key
                raise ValueError("each key must be text or a mapping {key: ..., name: ...}")
            entries.append({"name": f"key-{position}", **entry})
        return entries

    @_model_validator(mode="before")
    @classmethod
    def _fold_callback_secrets(cls, data: Any) -> Any:
        return fold_callback_secrets(data)

    @_field_validator("url_secret", mode="before")
    @classmethod
    def _secret_is_text(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str | SecretStr):
            raise ValueError("must be text")  # never echo what may be a secret
        return value

    @_field_validator("api_keys")
    @classmethod
    def _keys_are_usable(cls, value: list[GatewayKey]) -> list[GatewayKey]:
        for key in value:
            text = key.get_secret_value()
            if not text or text != text.strip() or any(c.isspace() for c in text):
                raise ValueError("a gateway key must be non-empty and contain no spaces")
        names = [key.name for key in value]
        if len(set(names)) != len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"two gateway keys are named {', '.join(twice)}")
        secrets_ = [key.get_secret_value() for key in value]
        if len(set(secrets_)) != len(secrets_):
            raise ValueError("the same gateway key is listed twice")  # never say which
        return value

    @_field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for origin in value:
            origin = origin.strip().rstrip("/").lower()
            scheme, sep, rest = origin.partition("://")
            if origin != "*" and (scheme not in ("http", "https") or not sep or not rest
                                  or "/" in rest or "?" in rest or "#" in rest):
                raise ValueError(
                    f"{origin!r} is not an origin: use scheme://host[:port], e.g. "
                    "https://app.example.com, or *"
                )
            out.append(origin)
        return out

    @_field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        out = []
        for host in value:
            host = host.strip().lower()
            if not host or any(c in host for c in "/?#@ "):
                raise ValueError(
                    f"{host!r} is not a host: use a name or address with an optional port, "
                    "e.g. img.example.com, img.example.com:8443, *.example.com, or *"
                )
            out.append(host)
        return out

    @_field_validator("public_base_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")) or "?" in value or "#" in value:
            raise ValueError("must be an http(s) URL without a query, e.g. https://img.example.com")
        return value


class SharedSettings(_Section):
    """State the processes of one deployment share (imagerouter/stores/shared_open.py):
    `memory` (this process), `sqlite` (a file under the imagerouter home, or sqlite:///path)
    or `redis://host:port/db`. `prefix` starts every Redis key (several fleets, one Redis)."""

    url: str = "memory"
    prefix: str = "imagerouter:"

    @_field_validator("url")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value not in ("memory", "sqlite") and not value.startswith(
            ("sqlite://", "redis://", "rediss://")
        ):
            raise ValueError("use memory, sqlite, sqlite:///path or redis://host:port/db")
        return value

    @_field_serializer("url", when_used="json")
    def _without_password(self, value: str) -> str:
        from .stores import redact_url  # `config check --json` must not print a password

        return redact_url(value)


class McpSettings(_Section):
    """`imagerouter mcp`: the MCP server for coding agents (docs/agents.md). Its limits come on
    top of `budget.*`: `daily_usd` caps what every MCP call together may spend per UTC day,
    `max_cost_usd` caps each call (a call's own `max_cost_usd` may only lower it)."""

    daily_usd: Decimal | None = Field(default=None, ge=0)
    max_cost_usd: Decimal | None = Field(default=None, gt=0)
    # http(s) input images are handed to the provider (which fetches them) only if allowed.
    allow_url_inputs: bool = False


class Config(_Section):
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
        from .quoting import Catalog  # quoting reads Config: imported late, not at load

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
_SECTIONS = tuple(name for name in Config.model_fields if name != "source")


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


def find_config_path(explicit: str | Path | None = None) -> Path | None:
    """explicit > `$IMAGEROUTER_CONFIG` > `./imagerouter.yaml` > None (use built-in defaults).
    An explicit or `$IMAGEROUTER_CONFIG` path is returned even if missing, so loading it fails
    loudly instead of silently falling back."""
    if explicit is not None and str(explicit):
        return Path(explicit).expanduser()
    from_env = os.environ.get(CONFIG_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.is_file() else None


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    *,
    known_providers: Collection[str] | None = None,
) -> Config:
    """Load and validate a config file, a dict, or (with None) whatever the search finds."""
    if isinstance(source, Mapping):
        config = _from_data(source, {}, DICT_SOURCE, file=None)
    else:
        path = find_config_path(source)
        if path is None:
            config = default_config()
        else:
            document = parse_yaml(_read(path), str(path))
            config = _from_data(document.data, document.lines, str(path), file=path)
    if known_providers is not None:
        config.check_providers(known_providers)
    return config


def default_config() -> Config:
    """The built-in defaults (package data `imagerouter/defaults.yaml`)."""
    document = parse_yaml(_builtin_text(), BUILTIN_SOURCE)
    return _from_data(document.data, document.lines, BUILTIN_SOURCE, file=None, builtin=True)


def _builtin_text() -> str:
    return resources.files("imagerouter").joinpath("defaults.yaml").read_text(encoding="utf-8")


def _read(path: Path) -> str:
    # Capped like every input: `--config /dev/zero` must fail at once, not fill memory.
    try:
        data = read_bounded(path, MAX_CONFIG_BYTES)
    except FileReadError as exc:
        if exc.reason == "missing":
            message = "the config file does not exist"
        elif exc.reason == "too_large":
            message = (
                f"the config file is over the limit of {MAX_CONFIG_BYTES // 1024} KiB "
                f"({MAX_CONFIG_BYTES:,} bytes); no real config comes near it"
            )
        elif exc.reason == "not_regular":
            message = f"the config path {exc}"
        else:
            message = f"the config file {exc}"
        raise ConfigError(message, file=str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError("the config file is not UTF-8 text", file=str(path)) from None


def _from_data(
    data: Any, lines: dict[str, int], source: str, *, file: Path | None, builtin: bool = False
) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else repr(data)
        raise ConfigError(
            f"the config must be a mapping of sections (like `routing:`), not {kind}",
            file=source, line=lines.get(""),
        )
    data = {str(k): v for k, v in data.items() if v is not None}  # `routing:` alone = defaults
    if "source" in data:
        raise ConfigError(
            f"is not a known key; allowed: {', '.join(sorted(_SECTIONS))}",
            file=source, line=lines.get("source"), key="source",
        )
    data = _interpolate(_prepare_providers(data, lines, source, file), "", lines, source)
    taken: set[str] = set()
    if builtin:
        taken = set(data)
    else:
        defaults = default_config().model_dump(exclude_unset=True, exclude={"source"})
        for section in _SECTIONS:
            if section not in data and section in defaults:
                data[section] = defaults[section]
                taken.add(section)
    try:
        config = Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise problem_from_validation_error(exc, Config, data, lines, source) from None
    config._lines = dict(lines)
    config._builtin_sections = frozenset(taken)
    _check_semantics(config)
    return config


def _prepare_providers(
    data: dict[str, Any], lines: dict[str, int], source: str, file: Path | None
) -> dict[str, Any]:
    """Resolve each `providers.<name>.api_key: ${VAR}` now, or keep it lazy if VAR is unset."""
    providers = data.get("providers")
    if not isinstance(providers, Mapping):
        return data
    prepared: dict[str, Any] = {}
    for name, entry in providers.items():
        entry = {} if entry is None else entry
        if isinstance(entry, Mapping) and isinstance(entry.get("api_key"), str):
            entry = dict(entry)
            key_path = f"providers.{name}.api_key"
            match = _ENV_REF.fullmatch(entry["api_key"])
            if match:
                entry.setdefault("api_key_env", match.group(1))
                value = os.environ.get(match.group(1))
                entry["api_key"] = SecretStr(value) if value else None
            elif entry["api_key"] and file is not None:
                _warn_if_readable(file, lines.get(key_path), key_path)
        prepared[str(name)] = entry
    return {**data, "providers": prepared}


def _warn_if_readable(file: Path, line: int | None, key_path: str) -> None:
    try:
        mode = file.stat().st_mode
    except OSError:
        return
    if os.name != "nt" and mode & 0o044:
        logger.warning(
            "%s:%s: %s is written into a file other users can read (mode %03o); "
            "use ${VARIABLE} instead, or chmod 600 the file",
            file, line, key_path, mode & 0o777,
        )


def _interpolate(node: Any, path: str, lines: dict[str, int], source: str) -> Any:
    if isinstance(node, Mapping):
        return {k: _interpolate(v, child_path(path, str(k)), lines, source)
                for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_interpolate(v, item_path(path, i), lines, source) for i, v in enumerate(node)]
    if isinstance(node, str):
        match = _ENV_REF.fullmatch(node)
        if match:
            value = os.environ.get(match.group(1))
            if not value:
                raise ConfigError(
                    f"the environment variable {match.group(1)} is not set",
                    file=source, line=nearest_line(lines, path), key=path,
                )
            return value
    return node


def _check_semantics(config: Config) -> None:
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

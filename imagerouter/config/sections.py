"""The pydantic models of the config's sections: `routing`, `budget`, `health`, `cache`,
`prices`, `ledger`, `output`, `downloads`, `shared`, `mcp` and a tier's variants (`gateway` has
its own module, gateway_section.py). Each is frozen and refuses unknown keys; a model checks
only its own fields (rules that span sections are in schema.py).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import field_serializer as _field_serializer
from pydantic import field_validator as _field_validator

from ..geometry import Resolution
from ..request import MODELS, Background, ModelName, OutputFormat, Quality

__all__ = [
    "BudgetSettings",
    "CacheSettings",
    "DownloadSettings",
    "HealthSettings",
    "LedgerSettings",
    "McpSettings",
    "OutputSettings",
    "PricesSettings",
    "RoutingSettings",
    "Section",
    "SharedSettings",
    "TierVariant",
    "expand_user",
]


class Section(BaseModel):
    """A config section: frozen, and an unknown key or a NaN/inf number is an error, not
    something silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TierVariant(Section):
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


class RoutingSettings(Section):
    strategy: Literal["cheapest", "priority", "fastest"] = "cheapest"
    max_attempts: int = Field(default=3, ge=1)
    on_unknown_submission: Literal["reconcile", "fail", "failover"] = "reconcile"
    on_deadline: Literal["wait", "fail", "hedge"] = "fail"
    resume_on_start: bool = False
    # What a requested WxH promises when the request does not say (issue 12; docs).
    size_policy: Literal["exact", "at_least", "nearest"] = "exact"


class BudgetSettings(Section):
    daily_usd: Decimal | None = Field(default=None, ge=0)
    monthly_usd: Decimal | None = Field(default=None, ge=0)
    total_usd: Decimal | None = Field(default=None, ge=0)


class HealthSettings(Section):
    failure_threshold: int = Field(default=3, ge=1)
    base_ejection_s: float = Field(default=30.0, gt=0)
    max_ejection_s: float = Field(default=300.0, gt=0)
    jitter: float = Field(default=0.1, ge=0, le=1)
    rate_limit_cooldown_s: float = Field(default=10.0, gt=0)
    out_of_credit_s: float = Field(default=3600.0, gt=0)
    max_rate_limit_s: float = Field(default=300.0, ge=0)
    trial_timeout_s: float = Field(default=1200.0, gt=0)
    free_checks: bool = False


def expand_user(value: Path | None) -> Path | None:
    """`~/images` -> the user's home (a field validator shared by every path setting)."""
    return value.expanduser() if value is not None else None


class CacheSettings(Section):
    """The opt-in result cache (imagerouter/cache.py): an identical request is answered from
    the ledger's saved images at $0 for `ttl` (e.g. 7d, 12h, 30m, 45s or seconds)."""

    enabled: bool = False
    ttl: float = Field(default=7 * 86400.0, gt=0)

    @_field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> Any:
        from ..cache import parse_ttl

        return parse_ttl(value)


class PricesSettings(Section):
    """Live prices (imagerouter/live_prices.py, docs/prices.md): `live` uses the newest
    snapshot `imagerouter prices refresh` stored under `dir` (None: <imagerouter home>/prices)
    in quotes and routing; the user's `providers.<name>.prices` still win over it."""

    live: bool = True
    dir: Path | None = None

    _expand = _field_validator("dir")(expand_user)


class LedgerSettings(Section):
    enabled: bool = True
    path: Path | None = None  # None: imagerouter.paths.default_ledger_path()
    # sqlite:///path or postgresql://... (imagerouter.stores); None: the `path` file. Keep a
    # password out of it: libpq reads PGPASSWORD or ~/.pgpass.
    url: str | None = None

    _expand = _field_validator("path")(expand_user)

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
        from ..stores import redact_url  # `config check --json` must not print a password

        return None if value is None else redact_url(value)


class OutputSettings(Section):
    dir: Path = Path("images")

    _expand = _field_validator("dir")(expand_user)


class DownloadSettings(Section):
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


class SharedSettings(Section):
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
        from ..stores import redact_url  # `config check --json` must not print a password

        return redact_url(value)


class McpSettings(Section):
    """`imagerouter mcp`: the MCP server for coding agents (docs/agents.md). Its limits come on
    top of `budget.*`: `daily_usd` caps what every MCP call together may spend per UTC day,
    `max_cost_usd` caps each call (a call's own `max_cost_usd` may only lower it)."""

    daily_usd: Decimal | None = Field(default=None, ge=0)
    max_cost_usd: Decimal | None = Field(default=None, gt=0)
    # http(s) input images are handed to the provider (which fetches them) only if allowed.
    allow_url_inputs: bool = False

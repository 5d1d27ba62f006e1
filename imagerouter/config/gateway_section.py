"""The `gateway` section (`imagerouter serve`, docs/gateway.md): its keys with their limits,
browser origins, allowed Host headers, body limits and timeouts, signed URLs, model aliases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic import field_validator as _field_validator
from pydantic import model_validator as _model_validator

from .sections import Section, expand_user
from .yamlsource import fold_callback_secrets

__all__ = ["GatewayKey", "GatewaySettings"]

_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class GatewayKey(Section):
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


class GatewaySettings(Section):
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

    _expand = _field_validator("output_dir")(expand_user)

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

"""The configuration: a YAML file (or a dict) validated into one frozen `Config`.

Search order: an explicit path, then `$IMAGEROUTER_CONFIG`, then `./imagerouter.yaml`, then the
built-in defaults (`imagerouter/config/defaults.yaml`). A section a file leaves out comes from
the built-in defaults, so a three-line file still has the `draft`/`standard`/`premium` tiers.

Every mistake is one `ConfigError` that reads `file:line: key.path: what is wrong`. A string
value that is exactly `${NAME}` is read from the environment after parsing; an unset variable
is an error, except for `providers.<name>.api_key`, which stays lazy so that quoting and
`--emulate` work without keys (the key is looked up again when the provider is used).

The package's parts: `loading` (find, read, parse, interpolate, merge the defaults),
`yamlsource` (the YAML parser that keeps line numbers, and pydantic errors in plain words),
`schema` (`Config` and the rules that span sections), `sections` and `gateway_section` (the
model of each section), `defaults.yaml` (the built-in configuration, package data).
"""

from __future__ import annotations

from .gateway_section import GatewayKey, GatewaySettings
from .loading import (
    BUILTIN_SOURCE,
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_NAME,
    DICT_SOURCE,
    default_config,
    find_config_path,
    load_config,
)
from .schema import Config
from .sections import (
    BudgetSettings,
    DownloadSettings,
    HealthSettings,
    LedgerSettings,
    McpSettings,
    OutputSettings,
    PricesSettings,
    RoutingSettings,
    SharedSettings,
    TierVariant,
)

# Importable as before (`imagerouter.config.CacheSettings`), though never in `__all__`.
from .sections import CacheSettings as CacheSettings

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

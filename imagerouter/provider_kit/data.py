"""A plugin's data files (prices, capabilities) and the one deep merge of user overrides."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

from imagerouter.errors import ConfigError

__all__ = ["deep_merge", "load_yaml"]


def load_yaml(package: str, filename: str) -> Any:
    """The parsed YAML file `filename` shipped inside `package` (a plugin's own data).
    A broken shipped file is a ConfigError naming it, never a bare YAML traceback."""
    resource = resources.files(package).joinpath(filename)
    try:
        text = resource.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(
            f"cannot read shipped data: {exc}", file=f"{package}/{filename}"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=f"{package}/{filename}") from None


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it: mappings merge key by key, anything else (lists,
    scalars) is replaced whole. Neither input is modified."""
    # Nested mappings are copied, so a caller may change the result without touching base.
    merged: dict[str, Any] = {
        key: deep_merge(value, {}) if isinstance(value, Mapping) else value
        for key, value in base.items()
    }
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        elif isinstance(value, Mapping):  # copied too: the result never aliases an input
            merged[key] = deep_merge(value, {})
        else:
            merged[key] = value
    return merged

"""Loading: find the config file, read it (capped), parse it with line numbers, resolve
`${VAR}` references, fill the sections a file leaves out from the built-in defaults
(defaults.yaml, package data), validate into a `Config` and report every mistake as one
`ConfigError` reading `file:line: key.path: what is wrong`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from ..bounded import FileReadError, read_bounded
from ..errors import ConfigError
from .schema import SECTIONS, Config, check_semantics
from .yamlsource import (
    MAX_CONFIG_BYTES,
    child_path,
    item_path,
    nearest_line,
    parse_yaml,
    problem_from_validation_error,
)

__all__ = [
    "BUILTIN_SOURCE",
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_NAME",
    "DICT_SOURCE",
    "default_config",
    "find_config_path",
    "load_config",
]

# The logger's name from before config/ was a package, so users' logging settings still apply.
logger = logging.getLogger("imagerouter.config")

CONFIG_ENV_VAR = "IMAGEROUTER_CONFIG"
DEFAULT_CONFIG_NAME = "imagerouter.yaml"
BUILTIN_SOURCE = "<built-in defaults>"
DICT_SOURCE = "<dict>"

# Only a whole value is a reference: "a-${X}" stays as typed (documented in configuration.md).
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


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
    """The built-in defaults (package data `imagerouter/config/defaults.yaml`)."""
    document = parse_yaml(_builtin_text(), BUILTIN_SOURCE)
    return _from_data(document.data, document.lines, BUILTIN_SOURCE, file=None, builtin=True)


def _builtin_text() -> str:
    # Package data next to this module (pyproject.toml ships every file of the package).
    defaults = resources.files("imagerouter.config").joinpath("defaults.yaml")
    return defaults.read_text(encoding="utf-8")


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
            f"is not a known key; allowed: {', '.join(sorted(SECTIONS))}",
            file=source, line=lines.get("source"), key="source",
        )
    data = _interpolate(_prepare_providers(data, lines, source, file), "", lines, source)
    taken: set[str] = set()
    if builtin:
        taken = set(data)
    else:
        defaults = default_config().model_dump(exclude_unset=True, exclude={"source"})
        for section in SECTIONS:
            if section not in data and section in defaults:
                data[section] = defaults[section]
                taken.add(section)
    try:
        config = Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise problem_from_validation_error(exc, Config, data, lines, source) from None
    config._lines = dict(lines)
    config._builtin_sections = frozenset(taken)
    check_semantics(config)
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

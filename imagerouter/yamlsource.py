"""Moved to `imagerouter.config.yamlsource`; this name keeps old imports working for a release."""

from .config.yamlsource import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    YamlDocument,
    child_path,
    fold_callback_secrets,
    item_path,
    nearest_line,
    parse_yaml,
    problem_from_validation_error,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "YamlDocument",
    "child_path",
    "fold_callback_secrets",
    "item_path",
    "nearest_line",
    "parse_yaml",
    "problem_from_validation_error",
]

"""A safe YAML loader that remembers where every key came from.

`yaml.safe_load` throws the line numbers away, so config errors could only name a key. Here the
document is composed into nodes (PyYAML's safe composer: no arbitrary tags) and turned into
plain data by hand, recording `key path -> line` on the way. Key paths read like
`tiers.draft[0].quality`. Duplicate keys, unknown tags and recursive aliases are errors.
`problem_from_validation_error` then puts pydantic's complaints back on those lines, in plain
words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import InitErrorDetails
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ConfigError

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

_TAG = "tag:yaml.org,2002:"
# Scalars converted to Python values; every other resolved scalar (timestamps, explicit !!str)
# stays the text the user typed, so `dir: 2026-08-20` is a folder name, not a date.
_TYPED_SCALARS = {f"{_TAG}{name}" for name in ("null", "bool", "int", "float")}
_TEXT_SCALARS = {f"{_TAG}str", f"{_TAG}timestamp"}
# Aliases can expand exponentially ("billion laughs"); no real config comes near this.
_MAX_NODES = 100_000
# PyYAML composes nodes recursively: a 100,000-deep `[[[...` would raise RecursionError. Its
# pure-Python parser also reads only ~100 KiB of small keys a second, so a 50 MB document took
# minutes. A real config is a few KiB nested four or five deep: 256 KiB parses in ~2 s at worst.
MAX_CONFIG_BYTES = 256 * 1024
MAX_DEPTH = 64


@dataclass(frozen=True)
class YamlDocument:
    """Plain data (dicts, lists, str, int, float, bool, None) and the line of every key path."""

    data: Any
    lines: dict[str, int] = field(default_factory=dict)


def child_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def item_path(path: str, index: int) -> str:
    return f"{path}[{index}]"


def nearest_line(lines: dict[str, int], path: str) -> int | None:
    """The line of `path`, or of its closest ancestor that has one (e.g. for a missing key)."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return lines.get("")


def parse_yaml(text: str, source: str) -> YamlDocument:
    """Parse one YAML document; raise ConfigError (`source:line: ...`) on anything unsafe."""
    if len(text) > MAX_CONFIG_BYTES:  # characters: never fewer than the file's bytes
        raise ConfigError(
            f"the document is over the limit of {MAX_CONFIG_BYTES // 1024} KiB", file=source
        )
    loader: _DepthLimitedLoader | None = None
    try:
        loader = _DepthLimitedLoader(text)  # the reader refuses control characters here
        root = loader.get_single_node()
    except _TooDeep as exc:
        raise ConfigError(
            f"values are nested more than {MAX_DEPTH} levels deep", file=source, line=exc.line
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "cannot be parsed"
        if problem.startswith("but ") and exc.context:  # PyYAML splits one sentence in two
            problem = f"{exc.context}, {problem}"
        raise ConfigError(f"invalid YAML: {problem}", file=source, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=source) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        return YamlDocument(data=None, lines={})
    builder = _Builder(source)
    data = builder.build(root, "")
    return YamlDocument(data=data, lines=builder.lines)


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing collections nested deeper than MAX_DEPTH before the
    recursive composer can exhaust the stack."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            # Collections count; a scalar (or alias) leaf at the deepest level is fine.
            leaf = self.check_event(yaml.ScalarEvent, yaml.AliasEvent)
            if self._depth > MAX_DEPTH and not leaf:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _TooDeep(event.start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _short(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


class _Builder:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}
        self.count = 0
        self.active: set[int] = set()
        self.constructor = SafeConstructor()

    def error(self, node: Node, message: str, path: str = "") -> ConfigError:
        return ConfigError(message, file=self.source, line=node.start_mark.line + 1, key=path)

    def build(self, node: Node, path: str) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise self.error(node, f"more than {_MAX_NODES} values (alias expansion?)")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self.active:
            raise self.error(node, "a recursive alias is not allowed", path)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode) and node.tag == f"{_TAG}map":
                return self.mapping(node, path)
            if isinstance(node, SequenceNode) and node.tag == f"{_TAG}seq":
                return [self.build(item, item_path(path, i)) for i, item in enumerate(node.value)]
            raise self.error(node, f"the YAML tag {_short(node.tag)} is not allowed", path)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: ScalarNode, path: str) -> Any:
        if node.tag in _TEXT_SCALARS:
            return str(node.value)
        if node.tag in _TYPED_SCALARS:
            try:
                return self.constructor.construct_object(node, deep=True)
            except (ConstructorError, ValueError):
                raise self.error(node, f"{node.value!r} cannot be read", path) from None
        raise self.error(node, f"the YAML tag {_short(node.tag)} is not allowed", path)

    def mapping(self, node: MappingNode, path: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        own: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == f"{_TAG}merge":
                merged.update(self.merge(value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                raise self.error(key_node, "a key must be a plain value, not a collection", path)
            # Keys stay the text typed: `1k`, `no` and `2` are names here, not a bool or an int.
            key = str(key_node.value)
            key_path = child_path(path, key)
            line = key_node.start_mark.line + 1
            if key in own:
                raise self.error(
                    key_node, f"duplicate key (first at line {first_line[key]})", key_path
                )
            first_line[key] = line
            self.lines[key_path] = line
            own[key] = self.build(value_node, key_path)
            # The key's own line beats the value's (a block value starts on the next line).
            self.lines[key_path] = line
        for key, line in first_line.items():  # a later `<<` must not move an own key's line
            self.lines[child_path(path, key)] = line
        return {**merged, **own}

    def merge(self, node: Node, path: str) -> dict[str, Any]:
        """`<<: *anchor` (or a list of anchors): earlier mappings win, own keys win over all."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        result: dict[str, Any] = {}
        for source in reversed(sources):
            if not isinstance(source, MappingNode):
                raise self.error(source, "`<<` must merge a mapping or a list of mappings", path)
            result.update(self.build(source, path))
        return result


# Values of these keys (and of any key that ends in `_secret` or sits below a
# `*_secrets` mapping, see `_is_secret`) are never echoed in a message.
_SECRET_KEYS = {"api_key", "api_keys", "url_secret"}
_CALLBACK_SECRET = "_callback_secret"  # noqa: S105 - a key suffix, not a secret


def _is_secret(path: str) -> bool:
    parts = [part.split("[", 1)[0] for part in path.split(".")]
    last = parts[-1] if parts else ""
    return (
        last in _SECRET_KEYS
        or last.endswith("_secret")
        or any(part.endswith("_secrets") for part in parts[:-1])
        or "api_keys" in parts[:-1]  # anything inside a gateway key entry ({key: ..., name})
    )


def fold_callback_secrets(data: Any) -> Any:
    """`gateway.<provider>_callback_secret: s` (the older spelling) as
    `gateway.callback_secrets: {<provider>: s}`, for any provider name; the explicit mapping
    wins. A value that is not text is refused under its own key, never echoed."""
    if not isinstance(data, Mapping):
        return data
    legacy = [key for key in data if isinstance(key, str) and key.endswith(_CALLBACK_SECRET)]
    if not legacy:
        return data
    out = dict(data)
    folded: dict[str, Any] = {}
    problems: list[InitErrorDetails] = []
    for key in legacy:
        value = out.pop(key)
        name = key.removesuffix(_CALLBACK_SECRET)
        if value is None:
            continue
        if not isinstance(value, str | SecretStr) or not name:
            problems.append(InitErrorDetails(type="string_type", loc=(key,), input=value))
            continue
        folded[name] = value
    if problems:
        raise ValidationError.from_exception_data("GatewaySettings", problems)
    explicit = out.get("callback_secrets")
    out["callback_secrets"] = {**folded, **(explicit if isinstance(explicit, Mapping) else {})}
    if explicit is not None and not isinstance(explicit, Mapping):
        out["callback_secrets"] = explicit  # let the field's own validation say what is wrong
    return out
_NUMBER_ERRORS = {"float_parsing", "float_type", "decimal_parsing", "decimal_type",
                  "finite_number", "decimal_max_digits", "decimal_max_places"}
_WHOLE_ERRORS = {"int_parsing", "int_type", "int_from_float"}
_MAPPING_ERRORS = {"dict_type", "model_type", "model_attributes_type"}
_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}


def problem_from_validation_error(
    exc: ValidationError,
    root: type[BaseModel],
    data: Any,
    lines: dict[str, int],
    source: str,
) -> ConfigError:
    """The first problem (in file order) of a ValidationError, as a ConfigError."""
    problems: list[tuple[int, int, ConfigError]] = []
    for order, error in enumerate(exc.errors(include_url=False)):
        loc = tuple(error["loc"])
        path = _path_of(loc, data, missing=error["type"] == "missing")
        line = nearest_line(lines, path)
        message = _plain(error, path, _allowed_keys(root, loc[:-1]))
        problems.append((line or 0, order, ConfigError(message, file=source, line=line, key=path)))
    return min(problems, key=lambda item: item[:2])[2]


def _path_of(loc: tuple[Any, ...], data: Any, *, missing: bool) -> str:
    """Follow pydantic's loc through the data; parts not in the data (union tags) drop out."""
    path, node = "", data
    for position, part in enumerate(loc):
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            path, node = item_path(path, part), node[part]
        elif isinstance(node, Mapping) and str(part) in node:
            path, node = child_path(path, str(part)), node[str(part)]
        elif missing and position == len(loc) - 1:
            path = child_path(path, str(part))
    return path


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model that sits at `loc` (for "is not a known key")."""
    current: Any = root
    for part in loc:
        current = _unwrap_optional(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if str(part) not in current.model_fields:
                return []
            current = current.model_fields[str(part)].annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return []
    current = _unwrap_optional(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(name for name, info in current.model_fields.items() if not info.exclude)
    return []


def _unwrap_optional(annotation: Any) -> Any:
    args = get_args(annotation)
    if get_origin(annotation) in (Union, _UnionType) and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


_UnionType = type(int | None)


def _plain(error: Any, path: str, allowed: list[str]) -> str:
    kind = str(error["type"])
    ctx = error.get("ctx") or {}
    # "gateway.api_keys[2]" is as secret as "gateway.api_keys".
    secret = _is_secret(path)
    given = "" if secret else f", not {_describe(error.get('input'))}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return f"is not a known key; allowed: {', '.join(allowed)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", ""))) or [ctx.get("expected")]
        what = "the value" if secret else repr(error.get("input"))
        return f"{what} is not one of {', '.join(map(str, choices))}"
    if kind in _BOUNDS:
        name, words = _BOUNDS[kind]
        return f"must be a number {words} {_number(ctx.get(name))}"
    if kind in _NUMBER_ERRORS:
        return f"must be a number{given}"
    if kind in _WHOLE_ERRORS:
        return f"must be a whole number{given}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false{given}"
    if kind == "string_type":
        return f"must be text{given}"
    if kind in _MAPPING_ERRORS:
        return f"must be a mapping (key: value){given}"
    if kind == "path_type":
        return f"must be a path{given}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list{given}"
    return str(error.get("msg", "is not valid")).removeprefix("Value error, ")


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)

"""The MCP tools' input schemas, generated from the request model the CLI and gateway use.

Every request field of `ImageRequest` (its JSON schema: types, enums, bounds) becomes a tool
argument, described with the help text of the matching CLI option, so a field added to the
model or an option's wording changed shows up here without a second list to keep in step.
Arguments are then validated by `ImageRequest.build`, the CLI's own validation, so a bad
argument gets the message the CLI would print (see `arguments.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import click

from ..cli.request_options import request_options
from ..request import ImageRequest

__all__ = [
    "NON_ARGUMENT_FIELDS",
    "TOOL_DESCRIPTIONS",
    "cli_help",
    "request_schema",
    "tool_schemas",
]

# Request fields an MCP caller does not set: input images are `images`/`mask` strings (the
# model's own schema describes Python objects), and whether URLs may be fetched is the
# server owner's choice (`mcp.allow_url_inputs`), not the agent's.
NON_ARGUMENT_FIELDS = frozenset({"images", "mask", "allow_url_inputs"})

# Words for what has no CLI option of the same name.
_EXTRA_HELP = {
    "prompt": "What to draw (generate) or how to change the input images (edit).",
    "output_dir": "Directory to save the images in (default: output.dir of the config).",
    "images": "Input images: local file paths, or http(s) URLs if the server allows them.",
    "mask": "A mask image (PNG with alpha): a local path, or an http(s) URL if allowed.",
    "idempotency_key": "A key of your own for this request: a call repeated with the same key "
    "(a retry) gets the first call's result and is never paid for twice.",
}

TOOL_DESCRIPTIONS = {
    "quote": "Price a request on every backend, ranked (eligible and cheapest first). "
    "Nothing is sent and nothing is spent.",
    "generate": "Generate images on the cheapest healthy backend, with failover that never "
    "pays twice. Returns the saved file paths, the images, the cost and the provider.",
    "edit": "Edit input images as the prompt says, on the cheapest healthy backend. Returns "
    "the saved file paths, the images, the cost and the provider.",
    "spend": "What was spent today and this month, and what is left of each budget (the "
    "global one, this MCP server's and the per-call cap).",
    "providers": "The backends this server routes to and their health.",
}


def cli_help() -> dict[str, str]:
    """Help text of the CLI's request options, by request field name."""

    @click.command()
    @request_options
    def probe(**_: Any) -> None:  # never run: it only carries the options
        """Carries the shared request options."""

    return {
        param.name: param.help
        for param in probe.params
        if isinstance(param, click.Option) and param.name and param.help
    }


def request_schema(*, edit: bool) -> dict[str, Any]:
    """The JSON schema of a generate (or edit, or quote) call's arguments."""
    model = ImageRequest.model_json_schema()
    helps = {**cli_help(), **_EXTRA_HELP}
    properties: dict[str, Any] = {}
    for name, spec in model.get("properties", {}).items():
        if name in NON_ARGUMENT_FIELDS:
            continue
        properties[name] = _describe(_simplify(spec), helps.get(name))
    if edit:
        properties["images"] = _describe(
            {"type": "array", "items": {"type": "string"}, "minItems": 1}, helps["images"]
        )
        properties["mask"] = _describe({"type": "string"}, helps["mask"])
    required = ["prompt", *(["images"] if edit else [])]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def tool_schemas() -> dict[str, dict[str, Any]]:
    """Every tool's input schema, by tool name."""
    run = request_schema(edit=False)
    for name in ("output_dir", "idempotency_key"):
        run["properties"][name] = _describe({"type": "string"}, _EXTRA_HELP[name])
    edit = request_schema(edit=True)
    for name in ("output_dir", "idempotency_key"):
        edit["properties"][name] = run["properties"][name]
    quote = request_schema(edit=False)
    quote["properties"]["edit_images"] = {
        "type": "integer",
        "minimum": 1,
        "maximum": 16,
        "description": "Quote an edit with this many input images.",
    }
    quote["required"] = []
    return {
        "quote": quote,
        "generate": run,
        "edit": edit,
        "spend": {"type": "object", "properties": {}, "additionalProperties": False},
        "providers": {"type": "object", "properties": {}, "additionalProperties": False},
    }


def _simplify(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Pydantic's schema of one field, as an agent reads it best: an optional field is the
    type itself (leaving it out means "not given"), with no `title` and no null default."""
    out = copy.deepcopy(dict(spec))
    out.pop("title", None)
    if out.get("default", 0) is None:
        out.pop("default")
    options = out.pop("anyOf", None)
    if options is not None:
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1:
            out.update(kept[0])
        else:
            out["anyOf"] = kept
    return out


def _describe(spec: dict[str, Any], text: str | None) -> dict[str, Any]:
    if text:
        spec["description"] = text
    return spec

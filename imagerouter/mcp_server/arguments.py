"""A tool call's arguments, checked the way the CLI checks its options, before any paid call.

The request fields go through `ImageRequest.build` (what the CLI, the Python API and the
gateway validate with) and the provider names through the CLI's own check; a problem becomes
a `ToolArgumentError` whose text is the line the CLI would print for the same mistake.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

from ..cli.common import failure
from ..cli.reporting import one_line
from ..cli.request_options import check_providers
from ..errors import ImageRouterError, RequestValidationError
from ..request import ImageInput, ImageRequest
from .schemas import NON_ARGUMENT_FIELDS

__all__ = ["CallArguments", "ToolArgumentError", "error_text", "parse_arguments"]


class ToolArgumentError(Exception):
    """A bad argument: the message is what the CLI prints (without its `error: `)."""


@dataclass
class CallArguments:
    """A validated call: the router's keyword arguments and the request they make."""

    prompt: str
    fields: dict[str, Any] = field(default_factory=dict)
    request: ImageRequest | None = None
    output_dir: Path | None = None
    idempotency_key: str | None = None  # checked by the router (IdempotencyKey.of)


def error_text(exc: ImageRouterError) -> str:
    """The CLI's one line for a library error (its type first where the CLI shows it)."""
    report = failure(exc)
    text = one_line(report.format_message())
    return f"{report.error_type}: {text}" if report.show_type else text


def parse_arguments(
    tool: str,
    arguments: Mapping[str, Any] | None,
    *,
    known_providers: Collection[str],
    allow_url_inputs: bool,
    cap_usd: Decimal | None,
) -> CallArguments:
    """Validate a quote / generate / edit call. `cap_usd` (mcp.max_cost_usd) lowers the
    call's own max_cost_usd, never raises it."""
    data = dict(arguments or {})
    output_dir = data.pop("output_dir", None)
    idempotency_key = data.pop("idempotency_key", None) if tool != "quote" else None
    edit_images = data.pop("edit_images", None) if tool == "quote" else None
    for name in NON_ARGUMENT_FIELDS - {"images", "mask"}:
        if name in data:
            raise ToolArgumentError(f"{name}: is set by the server's config (mcp.{name})")
    if tool != "edit":
        for name in ("images", "mask"):
            if name in data:
                hint = "use the edit tool" if tool == "generate" else "use edit_images"
                raise ToolArgumentError(f"{name}: is an edit argument; {hint}")
    prompt = data.pop("prompt", "a quote" if tool == "quote" else None)
    if not isinstance(prompt, str):
        raise ToolArgumentError(error_text(RequestValidationError("prompt", "is required")))
    if isinstance(data.get("providers"), list):
        data["providers"] = tuple(data["providers"])
    try:
        check_providers(data, known_providers)
    except click.BadParameter as exc:
        raise ToolArgumentError(one_line(exc.format_message())) from None
    data["max_cost_usd"] = _capped(data.get("max_cost_usd"), cap_usd)
    if tool == "edit":
        if not data.get("images"):
            raise ToolArgumentError(
                error_text(
                    RequestValidationError(
                        "images", "an edit needs at least one input image (a path, bytes or a URL)"
                    )
                )
            )
        data["allow_url_inputs"] = allow_url_inputs
    if edit_images is not None:
        if (
            not isinstance(edit_images, int)
            or isinstance(edit_images, bool)
            or not (1 <= edit_images <= 16)
        ):
            raise ToolArgumentError(f"edit_images: {edit_images!r} is not allowed; use 1 to 16")
        data["images"] = [
            ImageInput(kind="bytes", data=b"", label=f"<input {i + 1}>") for i in range(edit_images)
        ]
    try:
        request = ImageRequest.build(prompt=prompt, **data)
    except ImageRouterError as exc:
        raise ToolArgumentError(error_text(exc)) from None
    if output_dir is not None and not isinstance(output_dir, str):
        raise ToolArgumentError(f"output_dir: {output_dir!r} is not allowed; give a directory")
    fields = {key: value for key, value in data.items() if value is not None}
    return CallArguments(
        prompt=prompt,
        fields=fields,
        request=request,
        output_dir=Path(output_dir).expanduser() if output_dir else None,
        idempotency_key=idempotency_key,
    )


def _capped(asked: Any, cap: Decimal | None) -> Any:
    """The lower of the call's max_cost_usd and the server's per-call cap. A value that is
    not a number is passed on unchanged, for ImageRequest to refuse in its own words."""
    if cap is None:
        return asked
    if asked is None:
        return cap
    try:
        value = Decimal(str(asked))
    except (InvalidOperation, ValueError):
        return asked
    if not value.is_finite():
        return asked
    return min(value, cap)

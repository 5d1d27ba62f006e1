"""The request options shared by `quote`, `generate` and `edit`."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

import click

from ..geometry import RESOLUTIONS, SIZE_POLICIES
from ..request import BACKGROUNDS, OUTPUT_FORMATS, QUALITIES

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--model", metavar="MODEL", default=None,
                 help="A model family a provider declares. Default: gpt-image-2."),
    click.option("--quality", type=click.Choice(QUALITIES), default=None),
    click.option("--size", default=None, help="WxH (e.g. 1536x1024) or auto."),
    click.option("--aspect-ratio", "aspect_ratio", default=None, help="W:H (e.g. 16:9) or auto."),
    click.option("--resolution", type=click.Choice(RESOLUTIONS), default=None),
    click.option(
        "--size-policy",
        "size_policy",
        type=click.Choice(SIZE_POLICIES),
        default=None,
        help="What --size WxH promises: exact (the saved image is WxH; the default, "
        "routing.size_policy), at_least, or nearest.",
    ),
    click.option("-n", "n", type=int, default=None, help="Number of images (1-10)."),
    click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS), default=None),
    click.option("--background", type=click.Choice(BACKGROUNDS), default=None),
    click.option("--tier", default=None, help="A tier name from the config."),
    click.option(
        "--provider",
        "providers",
        multiple=True,
        help="Only these providers (repeat the option for several).",
    ),
    click.option("--moderation", type=click.Choice(("auto", "low")), default=None),
    click.option("--input-fidelity", "input_fidelity", type=click.Choice(("high", "low")),
                 default=None, help="Edits: how closely to keep the input image."),
    click.option("--max-cost", "max_cost_usd", default=None, help="Refuse above this USD total."),
]


def request_options(func: F) -> F:
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def cache_option(func: F) -> F:
    """`--no-cache`: never answer from the result cache (imagerouter/cache.py). Unset, the
    config's `cache.enabled` decides; request_fields passes it on as `cache=False`."""
    return click.option(
        "--no-cache", "cache", flag_value=False, default=None,
        help="Do not answer from the result cache (config cache.enabled).",
    )(func)


def request_fields(**kwargs: Any) -> dict[str, Any]:
    """The request fields the user set (None and empty tuples mean 'not given')."""
    fields = {k: v for k, v in kwargs.items() if v is not None and v != ()}
    if "providers" in fields:
        fields["providers"] = tuple(fields["providers"])
    return fields


def check_providers(fields: dict[str, Any], known: Collection[str]) -> None:
    """`--provider nope` is a typo, not "no backend is eligible": exit 2, naming the known."""
    for name in fields.get("providers", ()):
        if name not in known:
            raise click.BadParameter(
                f"no provider {name!r}; known: {', '.join(sorted(known)) or 'none'}",
                param_hint="--provider",
            )

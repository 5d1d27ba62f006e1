"""What every command shares: the --config/--json options, JSON output, error handling."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from ..config import Config, load_config
from ..emulated import Emulators
from ..errors import ConfigError, ImageRouterError, RequestValidationError
from ..plugins import Plugins
from ..router import Router

F = TypeVar("F", bound=Callable[..., Any])

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def config_option(func: F) -> F:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (default: $IMAGEROUTER_CONFIG, ./imagerouter.yaml, built-in).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON only.")(func)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def handle_errors(func: F) -> F:
    """Turn imagerouter errors into a clear one-line message and exit code 1 (2 for bad
    input), never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, RequestValidationError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except ImageRouterError as exc:
            click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@dataclass
class Loaded:
    plugins: Plugins
    config: Config


def load(config_path: Path | None) -> Loaded:
    plugins = Plugins.load()
    config = load_config(config_path, known_providers=plugins.providers())
    return Loaded(plugins, config)


@contextmanager
def open_router(
    config_path: Path | None,
    *,
    emulate: bool = False,
    faults: tuple[str, ...] = (),
    latency: str | None = None,
) -> Iterator[Router]:
    """A Router for a command; with `emulate`, pointed at in-process emulators."""
    loaded = load(config_path)
    if not emulate:
        router = Router(loaded.config, plugins=loaded.plugins)
        try:
            yield router
        finally:
            router.close()
        return
    fault_map = parse_faults(faults)
    with Emulators.start(
        loaded.plugins, latency=latency or "uniform:0.2,0.6", faults=fault_map
    ) as emu:
        router = Router(emu.configure(loaded.config), plugins=loaded.plugins)
        try:
            yield router
        finally:
            router.close()


def parse_faults(faults: tuple[str, ...]) -> dict[str, str]:
    """`--faults runapi=create:503@0.3;poll:500@0.1` -> {"runapi": "create:503@0.3;..."}."""
    out: dict[str, str] = {}
    for item in faults:
        name, sep, spec = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: use PROVIDER=SPEC", param_hint="--faults")
        out[name.strip()] = ";".join(filter(None, [out.get(name.strip(), ""), spec]))
    return out

"""What every command shares: the --config/--json options, JSON output, error handling."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from ..config import Config, load_config
from ..emulated import Emulators
from ..errors import ConfigError, ImageRouterError, MissingApiKeyError, RequestValidationError
from ..plugins import Plugins
from ..router import Router
from .reporting import CliFailure, exit_code_for

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


# Commands that can route to the emulators instead of real providers.
_EMULATE_COMMANDS = frozenset({"generate", "edit", "quote", "serve", "batch"})


def handle_errors(func: F) -> F:
    """Turn imagerouter errors into one clear line (or JSON object) and exit code 1, or 2 for
    bad input; the group (main.py) prints it. Never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ImageRouterError as exc:
            raise failure(exc) from exc

    return wrapper  # type: ignore[return-value]


def failure(exc: ImageRouterError) -> CliFailure:
    """The CLI's report of a library error, with the hint that fits the running command."""
    message = str(exc)
    missing = _missing_key(exc)
    if missing is not None:
        message = str(missing)
        ctx = click.get_current_context(silent=True)
        if ctx is not None and ctx.info_name in _EMULATE_COMMANDS:
            message += " Or add --emulate to run against the local emulators (no key, no charge)."
        exc = missing
    # Config and field errors already start with the file and key, or the field; others
    # read better with their type (`JobFailedError: runapi: ...`).
    plain = isinstance(exc, ConfigError | RequestValidationError)
    return CliFailure(
        message, error_type=type(exc).__name__, exit_code=exit_code_for(exc), show_type=not plain
    )


def _missing_key(exc: BaseException) -> MissingApiKeyError | None:
    """The MissingApiKeyError `exc` is, or was raised from (its explicit `__cause__` chain)."""
    current: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; never loop on a cycle
        if current is None or isinstance(current, MissingApiKeyError):
            return current
        current = current.__cause__
    return None


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
    check_faults_need_emulate(faults, emulate)
    loaded = load(config_path)
    if not emulate:
        router = Router(loaded.config, plugins=loaded.plugins)
        try:
            yield router
        finally:
            router.close()
        return
    fault_map = parse_faults(faults, loaded.plugins.providers())
    with Emulators.start(
        loaded.plugins, latency=latency or "uniform:0.2,0.6", faults=fault_map
    ) as emu:
        router = Router(emu.configure(loaded.config), plugins=loaded.plugins)
        try:
            yield router
        finally:
            router.close()


def parse_faults(
    faults: tuple[str, ...], known: Collection[str] | None = None
) -> dict[str, str]:
    """`--faults runapi=create:503@0.3;poll:500@0.1` -> {"runapi": "create:503@0.3;..."}.

    Checked here, before any emulator starts: the provider must exist (default: the installed
    plugins) and the spec must parse, else click.BadParameter (exit 2)."""
    from ..emulation import FaultPlan

    names = set(Plugins.load().providers() if known is None else known)
    out: dict[str, str] = {}
    for item in faults:
        name, sep, spec = item.partition("=")
        name = name.strip()
        if not sep or not name or not spec.strip():
            raise click.BadParameter(
                f"{item!r}: use PROVIDER=SPEC, SPEC e.g. create:503@0.5", param_hint="--faults"
            )
        if name not in names:
            raise click.BadParameter(
                f"{item!r}: no provider {name!r}; known: {', '.join(sorted(names)) or 'none'}",
                param_hint="--faults",
            )
        try:
            FaultPlan.parse(spec)
        except ValueError as exc:  # the emulation's EmulationSpecError, or a plain one
            detail = getattr(exc, "detail", None) or str(exc)
            raise click.BadParameter(f"{name}: {detail}", param_hint="--faults") from None
        out[name] = ";".join(filter(None, [out.get(name, ""), spec]))
    return out


def check_faults_need_emulate(faults: tuple[str, ...], emulate: bool) -> None:
    if faults and not emulate:
        raise click.UsageError(
            "--faults works only with --emulate (faults are injected by the local emulators)"
        )

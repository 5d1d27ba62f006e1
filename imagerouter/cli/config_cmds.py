"""`imagerouter config check`."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import click
from rich.markup import escape

from ..config import Config, load_config
from ..errors import MissingApiKeyError
from ..plugins import Plugins
from .common import config_option, console, handle_errors, json_option, print_json
from .text import printable


@click.group()
def config() -> None:
    """Inspect and validate configuration."""


@config.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@config_option
@json_option
@handle_errors
def check(path: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Validate a config file (exit 2 with file:line: key: reason on error).

    PATH and --config mean the same; without either, the usual search applies."""
    if path is not None and config_path is not None and path != config_path:
        raise click.UsageError("give the config as PATH or as --config, not both")
    plugins = Plugins.load()
    installed = plugins.providers()
    cfg = load_config(path or config_path, known_providers=installed)
    active = active_providers(cfg, installed)
    if as_json:
        print_json(
            {"ok": True, "source": cfg.source, "active_providers": active,
             "config": cfg.public_dict()}
        )
        return
    tiers = ", ".join(f"{name} ({len(v)})" for name, v in cfg.tiers.items()) or "none"
    console.print(
        f"[green]ok[/green] {escape(printable(str(cfg.source)))}: active providers "
        f"{', '.join(active) or 'none'}",
        soft_wrap=True,  # a path is never broken
    )
    console.print(f"tiers: {tiers}; strategy: {cfg.routing.strategy}", markup=False)


def active_providers(cfg: Config, installed: Collection[str]) -> list[str]:
    """The providers requests can be routed to: installed and not disabled. A provider the
    config does not mention is on, with its key read from its environment variable."""
    providers = Plugins.load().providers()
    active = []
    for name in sorted(installed):
        settings = cfg.provider_settings(name)
        provider = providers.get(name)
        if not settings.enabled:
            continue
        if provider is not None and provider.needs_key_to_route:
            try:  # off until its key is set (openai)
                settings.resolve_api_key(provider)
            except MissingApiKeyError:
                continue
        active.append(name)
    return active


COMMANDS = [config]

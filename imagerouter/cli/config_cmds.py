"""`imagerouter config check`."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import find_config_path, load_config
from ..plugins import Plugins
from .common import console, handle_errors, json_option, print_json


@click.group()
def config() -> None:
    """Inspect and validate configuration."""


@config.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@json_option
@handle_errors
def check(path: Path | None, as_json: bool) -> None:
    """Validate a config file (exit 2 with file:line: key: reason on error)."""
    plugins = Plugins.load()
    source = path or find_config_path()
    cfg = load_config(source, known_providers=plugins.providers())
    if as_json:
        print_json({"ok": True, "source": cfg.source, "config": cfg.public_dict()})
        return
    tiers = ", ".join(f"{name} ({len(v)})" for name, v in cfg.tiers.items()) or "none"
    console.print(f"[green]ok[/green] {cfg.source}: providers {', '.join(cfg.providers) or 'none'}")
    console.print(f"tiers: {tiers}; strategy: {cfg.routing.strategy}")


COMMANDS = [config]

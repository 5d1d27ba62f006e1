"""The `imagerouter` command group; each command lives in a module of its own."""

from __future__ import annotations

import logging
import os

import click

from .. import __version__
from . import config_cmds, ledger_cmds, quote_cmds, run_cmds, serve_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imagerouter")
@click.option("-v", "--verbose", count=True, help="Log attempts (-v) or everything (-vv).")
def cli(verbose: int) -> None:
    """Route GPT Image generation and editing across paid aggregators."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    if verbose or os.environ.get("IMAGEROUTER_LOG"):
        from ..redact import install

        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
        install()


for module in (quote_cmds, run_cmds, ledger_cmds, config_cmds, serve_cmd):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="imagerouter")

"""`imagerouter db upgrade`: apply the ledger's migrations (SQLite file or PostgreSQL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from ..stores import ledger_url, redact_url
from .common import config_option, handle_errors, json_option, load, print_json
from .reporting import CliFailure, ExitCode

__all__ = ["COMMANDS", "db"]


@click.group()
def db() -> None:
    """Manage the ledger database."""


@db.command("upgrade")
@click.option(
    "--url",
    default=None,
    help="The ledger to upgrade: sqlite:///path or postgresql://... (default: ledger.url, "
    "else ledger.path, from the config).",
)
@config_option
@json_option
@handle_errors
def upgrade_cmd(url: str | None, config_path: Path | None, as_json: bool) -> None:
    """Apply every pending migration; the SQLite schema's history carries over."""
    from ..stores.upgrade import upgrade

    target = url or ledger_url(load(config_path).config.ledger)
    if not target.startswith(("sqlite://", "postgresql://", "postgres://")) and "://" in target:
        raise click.BadParameter("use sqlite:///path or postgresql://...", param_hint="--url")
    try:
        done = upgrade(target)
    except sqlite3.Error as exc:
        # Connection refused, bad credentials, a locked file: one line, no traceback.
        raise CliFailure(
            f"ledger {redact_url(target)}: {exc}".splitlines()[0],
            error_type=type(exc).__name__,
            exit_code=ExitCode.FAILED,
        ) from None
    if as_json:
        print_json(
            {
                "ledger": redact_url(target),
                "backend": done.backend,
                "applied": list(done.applied),
                "migrations": list(done.migrations),
                "up_to_date": done.up_to_date,
            }
        )
        return
    applied = ", ".join(done.applied) if done.applied else "nothing to apply"
    click.echo(
        f"ledger {redact_url(target)} ({done.backend}): {applied}; "
        f"{len(done.migrations)} migrations recorded"
    )


COMMANDS = [db]

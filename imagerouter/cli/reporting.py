"""How a command reports that it did not do its job.

Every failure is one line on stderr (`error: ...`), or with `--json` one JSON object on stdout
(`{"error": {"type": ..., "message": ...}}`), so a script can parse every outcome. The exit
code says whose move it is: 1 the request failed at or after a provider, 2 what was typed or
configured is wrong (nothing was sent), 130 interrupted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from enum import IntEnum

import click

from ..errors import (
    ConfigError,
    ImageRouterError,
    InputImageError,
    MissingApiKeyError,
    RequestValidationError,
)
from .text import printable

__all__ = ["CliFailure", "ExitCode", "emit_failure", "exit_code_for", "json_wanted", "one_line"]


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the request failed at or after a provider (or could not be routed)
    BAD_INPUT = 2  # usage, option values, config, input files, keys: nothing was sent
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


# Errors in what the user typed or configured: refused before any paid call.
_BAD_INPUT: tuple[type[ImageRouterError], ...] = (
    ConfigError,
    RequestValidationError,
    InputImageError,
    MissingApiKeyError,
)


class CliFailure(click.ClickException):
    """A failure the group reports as one line (or one JSON object), with its exit code."""

    def __init__(
        self, message: str, *, error_type: str, exit_code: int, show_type: bool = False
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        # click 8.5 declares exit_code a ClassVar; click reads it from the instance.
        setattr(self, "exit_code", exit_code)  # noqa: B010
        self.show_type = show_type  # the one-line form starts with the type


def exit_code_for(exc: ImageRouterError) -> ExitCode:
    return ExitCode.BAD_INPUT if isinstance(exc, _BAD_INPUT) else ExitCode.FAILED


def one_line(text: str) -> str:
    """Multi-line messages (a list of offers' reasons) joined with '; ', control characters
    escaped: the message may quote a prompt or a provider's answer."""
    joined = ""
    for part in (part.strip() for part in str(text).splitlines()):
        if part:
            # "...: " introduces the list that follows; other lines are items of their own.
            joined += (" " if joined.endswith(":") else "; ") + part if joined else part
    return printable(re.sub(r"\s+", " ", joined))


def json_wanted(args: Sequence[str]) -> bool:
    """Whether the command line asked for JSON. Read from the raw arguments because a usage
    error happens before any option is parsed; a `--json` after `--` is an argument."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def emit_failure(error_type: str, message: str, *, as_json: bool, show_type: bool = False) -> None:
    text = one_line(message)
    if as_json:
        # stdout, like every other --json answer, so `cmd --json | jq` sees failures too.
        click.echo(json.dumps({"error": {"type": error_type, "message": text}}))
    else:
        click.echo(f"error: {error_type + ': ' if show_type else ''}{text}", err=True)

"""The `imagerouter` command group; each command lives in a module of its own."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from .. import __version__
from . import (
    batch_cmd,
    compare_cmd,
    config_cmds,
    db_cmd,
    ledger_cmds,
    mcp_cmd,
    prices_refresh,
    quote_cmds,
    run_cmds,
    serve_cmd,
)
from .reporting import CliFailure, ExitCode, emit_failure, json_wanted

_VERBOSITY_KEY = "imagerouter.verbosity"
# httpx logs every HTTP request at INFO, i.e. every poll: that is -vv detail, not -v. The
# debug lines of asyncio, httpcore and PIL are noise at any level.
_CHATTY_LOGGERS = ("httpx", "httpcore", "asyncio", "PIL")


class ImageRouterGroup(click.Group):
    """Reports every failure the same way: one line on stderr (one JSON object on stdout with
    --json) and a meaningful exit code, never a traceback or a usage screen."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        _Run.verbosity = 0
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, False, **extra)
        try:
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except CliFailure as exc:
            _fail(exc.error_type, exc.format_message(), exc.exit_code, argv, exc.show_type)
        except click.exceptions.NoArgsIsHelpError as exc:
            # `imagerouter` or `imagerouter config` alone: the help is the answer, not an error.
            click.echo(exc.format_message())
            sys.exit(ExitCode.OK)
        except click.ClickException as exc:
            # Usage errors (click's own): exit 2 like every other bad input.
            _fail(type(exc).__name__, exc.format_message(), ExitCode.BAD_INPUT, argv)
        except (click.Abort, KeyboardInterrupt):
            _fail("Interrupted", "interrupted", ExitCode.INTERRUPTED, argv)
        except OSError as exc:  # a port in use, a full disk, a directory we may not write
            _fail(type(exc).__name__, str(exc), ExitCode.FAILED, argv, show_type=True)
        except Exception as exc:  # a bug: still one line, the traceback on request
            if _verbosity() >= 2:
                traceback.print_exc()
            _fail(
                type(exc).__name__,
                f"unexpected {type(exc).__name__}: {exc} (a bug: -vv shows the traceback)",
                ExitCode.FAILED,
                argv,
            )
        sys.exit(code if isinstance(code, int) else 0)


def _fail(
    error_type: str, message: str, code: int, argv: Sequence[str], show_type: bool = False
) -> NoReturn:
    emit_failure(error_type, message, as_json=json_wanted(argv), show_type=show_type)
    sys.exit(code)


class _Run:
    """What this run's options said, for the failure report after the contexts closed."""

    verbosity = 0


def _verbosity() -> int:
    return _Run.verbosity


def _set_verbosity(ctx: click.Context, _param: click.Parameter, value: int) -> int:
    """-v / -vv count wherever they appear, before or after the subcommand (`-v generate -v`
    is -vv). The group's callback runs first; `meta` is shared with the subcommand's context."""
    level = ctx.meta.get(_VERBOSITY_KEY, 0) + (value or 0)
    ctx.meta[_VERBOSITY_KEY] = level
    _Run.verbosity = level
    if level or os.environ.get("IMAGEROUTER_LOG"):
        _configure_logging(level)
    return value


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time (click's test runner swaps it per run,
    and a handler bound to a closed stream would print logging's own tracebacks)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _configure_logging(verbosity: int) -> None:
    from ..redact import install

    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    root = logging.getLogger()
    if not any(isinstance(handler, _CurrentStderr) for handler in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY_LOGGERS:
        # -vv: one line per HTTP request (each poll); httpcore's wire detail stays off.
        chatty = logging.INFO if verbosity >= 2 and name == "httpx" else logging.WARNING
        logging.getLogger(name).setLevel(chatty)
    install()


def verbose_option() -> click.Option:
    return click.Option(
        ["-v", "--verbose"],
        count=True,
        expose_value=False,
        callback=_set_verbosity,
        is_eager=True,
        help="Log one line per attempt (-v) or per poll and HTTP request too (-vv).",
    )


@click.group(
    cls=ImageRouterGroup, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="imagerouter")
def cli() -> None:
    """Route GPT Image generation and editing across paid aggregators."""


cli.params.append(verbose_option())


def _add_verbose(command: click.Command) -> None:
    command.params.append(verbose_option())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_verbose(sub)


for module in (quote_cmds, run_cmds, ledger_cmds, config_cmds, serve_cmd, prices_refresh,
               compare_cmd, mcp_cmd, batch_cmd, db_cmd):
    for command in module.COMMANDS:
        _add_verbose(command)
        cli.add_command(command)


def main() -> None:
    cli(prog_name="imagerouter")

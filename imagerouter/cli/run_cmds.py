"""`imagerouter generate`, `edit` and `emulate`: the paid job, or its local stand-in."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from ..emulated import emulated_errors
from ..result import GenerationResult
from .common import (
    config_option,
    console,
    err_console,
    handle_errors,
    json_option,
    open_router,
    print_json,
)
from .live import AttemptBoard
from .reporting import emit_failure, one_line
from .request_options import cache_option, check_providers, request_fields, request_options
from .text import fit_last_column, usd_texts


def _run_options(func: Any) -> Any:
    func = request_options(func)
    func = cache_option(func)
    func = click.option(
        "-o", "--output-dir", "output_dir", type=click.Path(file_okay=False, path_type=Path)
    )(func)
    func = click.option(
        "--emulate",
        is_flag=True,
        help="Start the providers' emulators on loopback and route through them (no keys, "
        "no network, no charge).",
    )(func)
    func = click.option(
        "--faults",
        multiple=True,
        help="With --emulate: PROVIDER=SPEC fault injection, SPEC e.g. create:503@0.5.",
    )(func)
    func = config_option(func)
    func = json_option(func)
    return func


@click.command()
@click.argument("prompt")
@_run_options
@handle_errors
def generate(
    prompt: str,
    output_dir: Path | None,
    emulate: bool,
    faults: tuple[str, ...],
    config_path: Path | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Generate images for PROMPT on the cheapest healthy backend."""
    fields = request_fields(**options)
    _run(prompt, fields, output_dir, emulate, faults, config_path, as_json)


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--prompt", required=True, help="The edit instruction.")
@click.option("--mask", default=None, help="A mask image (PNG with alpha).")
@click.option("--allow-urls", is_flag=True, help="Pass http(s) inputs to the provider as URLs.")
@_run_options
@handle_errors
def edit(
    images: tuple[str, ...],
    prompt: str,
    mask: str | None,
    allow_urls: bool,
    output_dir: Path | None,
    emulate: bool,
    faults: tuple[str, ...],
    config_path: Path | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Edit IMAGES (paths, or URLs with --allow-urls) as --prompt says."""
    fields = request_fields(**options)
    fields["images"] = list(images)
    if mask:
        fields["mask"] = mask
    if allow_urls:
        fields["allow_url_inputs"] = True
    _run(prompt, fields, output_dir, emulate, faults, config_path, as_json)


def _run(
    prompt: str,
    fields: dict[str, Any],
    output_dir: Path | None,
    emulate: bool,
    faults: tuple[str, ...],
    config_path: Path | None,
    as_json: bool,
) -> None:
    with (
        emulated_errors(emulate),
        open_router(config_path, emulate=emulate, faults=faults) as router,
    ):
        check_providers(fields, router.plugins.providers())
        if output_dir is not None:
            fields["output_dir"] = output_dir
        live = not as_json and sys.stdout.isatty()
        try:
            if not live:
                result = router.generate(prompt, **fields)
            else:
                result = _with_live_progress(router, prompt, fields)
        except KeyboardInterrupt:
            # Say what was interrupted and what is still paid for at the provider.
            for interruption in router.recovery.interruptions:
                err_console.print(interruption.message(), markup=False, highlight=False)
            if not router.recovery.interruptions:
                err_console.print("interrupted before any request was sent", markup=False)
            if as_json:  # scripts parse every outcome, an interrupt too
                said = [i.message() for i in router.recovery.interruptions]
                emit_failure("Interrupted", "; ".join(said) or "interrupted", as_json=True)
            sys.exit(130)
    if as_json:
        print_json(result.to_dict())
        return
    _print_result(result, emulate)


def _with_live_progress(router: Any, prompt: str, fields: dict[str, Any]) -> GenerationResult:
    started = time.monotonic()

    def render() -> Table:
        title = f"imagerouter  {time.monotonic() - started:.1f}s"
        return fit_last_column(err_console, lambda width: board.table(title, width))

    with Live(console=err_console, refresh_per_second=8, transient=True) as live:
        board = AttemptBoard(on_change=lambda: live.update(render()))
        live.update(render())
        name = router.plugins.register(board, name="imagerouter-cli-live")
        try:
            return router.generate(  # type: ignore[no-any-return]
                prompt, progress=board.note, **fields
            )
        finally:
            router.plugins.unregister(name=name)


def _print_result(result: GenerationResult, emulate: bool) -> None:
    # soft_wrap: paths and ids are never broken by rich; the terminal wraps long lines.
    cost, billed = usd_texts([result.cost_usd, result.billed_usd])
    billed = f", billed {billed}" if billed else ""
    where = " (emulated: nothing was charged)" if emulate else ""
    console.print(
        f"[green]{len(result.images)} image(s)[/green] from {result.provider} {result.model} "
        f"for {cost}{billed}{where}",
        soft_wrap=True,
    )
    for image in result.images:
        converted = f" (converted from {image.converted_from})" if image.converted_from else ""
        console.print(
            f"  {image.path}  {image.width}x{image.height} {image.format}{converted}  "
            f"sha256 {image.sha256[:16]}",
            soft_wrap=True,
            markup=False,
        )
    if len(result.attempts) > 1:
        console.print("attempts:")
        for number, attempt in enumerate(result.attempts, 1):
            why = f": {one_line(attempt.error)}" if attempt.error else ""
            console.print(
                f"  {number}. {attempt.provider}/{attempt.model}: {attempt.outcome} "
                f"(accepted {attempt.accepted}){why}",
                markup=False,
                soft_wrap=True,
            )
    for note in result.notes:
        console.print(f"[dim]note: {note}[/dim]")


@click.command()
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="First port (0: free ports)."
)
@click.option("--provider", "names", multiple=True, help="Only these providers.")
@click.option("--faults", multiple=True, help="PROVIDER=SPEC, SPEC e.g. create:429@0.3.")
@click.option("--latency", default="uniform:0.5,2", help="Job durations: 0.5, uniform:a,b ...")
@click.option("--api-key", default="emulator-key", help="The key each emulator accepts.")
@handle_errors
def emulate(
    port: int, names: tuple[str, ...], faults: tuple[str, ...], latency: str, api_key: str
) -> None:
    """Run the providers' emulators as local servers until interrupted."""
    from ..emulation import EmulatorOptions, EmulatorServer, FaultPlan, LatencyModel
    from ..plugins import Plugins
    from .common import parse_faults

    if not api_key.strip():
        raise click.BadParameter("the key must not be empty", param_hint="--api-key")
    plugins = Plugins.load()
    unknown = sorted(set(names) - set(plugins.providers()))
    if unknown:
        raise click.BadParameter(
            f"no provider {unknown[0]!r}; known: {', '.join(sorted(plugins.providers()))}",
            param_hint="--provider",
        )
    fault_map = parse_faults(faults, plugins.providers())
    servers = []
    for offset, (name, provider) in enumerate(sorted(plugins.providers().items())):
        if names and name not in names:
            continue
        options = EmulatorOptions(
            api_key=api_key,
            latency=LatencyModel.parse(latency),
            faults=FaultPlan.parse(fault_map.get(name)),
        )
        try:
            app = provider.emulator(options)
        except NotImplementedError:
            continue
        server = EmulatorServer(app.app, port=port + offset if port else 0).start()
        servers.append(server)
        # Plain `export NAME=value` lines (no markup, no wrapping) so they paste into a shell.
        click.echo(f"# {name} emulator on {server.url}")
        click.echo(f"export {provider.base_url_env_var}={shlex.quote(server.url)}")
        click.echo(f"export {provider.key_env_var}={shlex.quote(api_key)}")
    click.echo("# Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            server.stop()


COMMANDS = [generate, edit, emulate]

"""`imagerouter generate`, `edit` and `emulate`: the paid job, or its local stand-in."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from ..execution import Progress
from ..pricing import quantize
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
from .request_options import request_fields, request_options


def _run_options(func: Any) -> Any:
    func = request_options(func)
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
        help="With --emulate: PROVIDER=SPEC fault injection, e.g. runapi=create:503@0.5.",
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
    with open_router(config_path, emulate=emulate, faults=faults) as router:
        if output_dir is not None:
            fields["output_dir"] = output_dir
        live = not as_json and sys.stdout.isatty()
        if not live:
            result = router.generate(prompt, **fields)
        else:
            result = _with_live_progress(router, prompt, fields)
    if as_json:
        print_json(result.to_dict())
        return
    _print_result(result, emulate)


def _with_live_progress(router: Any, prompt: str, fields: dict[str, Any]) -> GenerationResult:
    rows: dict[tuple[str, int], Progress] = {}
    started = time.monotonic()

    def render() -> Table:
        table = Table(title=f"imagerouter  {time.monotonic() - started:.1f}s")
        for column in ("provider", "task", "status", "elapsed"):
            table.add_column(column)
        for note in rows.values():
            table.add_row(
                note.provider, f"{note.task + 1}/{note.tasks}", note.state, f"{note.elapsed_s:.1f}s"
            )
        return table

    with Live(render(), console=err_console, refresh_per_second=8, transient=True) as live:

        def progress(note: Progress) -> None:
            rows[(note.provider, note.task)] = note
            live.update(render())

        return router.generate(prompt, progress=progress, **fields)  # type: ignore[no-any-return]


def _print_result(result: GenerationResult, emulate: bool) -> None:
    billed = f", billed ${quantize(result.billed_usd)}" if result.billed_usd is not None else ""
    where = " (emulated: nothing was charged)" if emulate else ""
    console.print(
        f"[green]{len(result.images)} image(s)[/green] from {result.provider} {result.model} "
        f"for ${quantize(result.cost_usd)}{billed}{where}"
    )
    for image in result.images:
        converted = f" (converted from {image.converted_from})" if image.converted_from else ""
        console.print(
            f"  {image.path}  {image.width}x{image.height} {image.format}{converted}  "
            f"sha256 {image.sha256[:16]}"
        )
    if len(result.attempts) > 1:
        console.print("attempts:")
        for attempt in result.attempts:
            console.print(
                f"  {attempt.provider}/{attempt.model}: {attempt.outcome} "
                f"(accepted {attempt.accepted}) {attempt.error_type or ''}"
            )
    for note in result.notes:
        console.print(f"[dim]note: {note}[/dim]")


@click.command()
@click.option("--port", type=int, default=0, help="First port (0: free ports).")
@click.option("--provider", "names", multiple=True, help="Only these providers.")
@click.option("--faults", multiple=True, help="PROVIDER=SPEC, e.g. runflow=create:429@0.3.")
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

    fault_map = parse_faults(faults)
    servers = []
    plugins = Plugins.load()
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
        env = provider.base_url_env_var
        console.print(
            f"{name}: {server.url}   ({env}={server.url}  {provider.key_env_var}={api_key})"
        )
    console.print("Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            server.stop()


COMMANDS = [generate, edit, emulate]

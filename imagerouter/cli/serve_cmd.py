"""`imagerouter serve`: the OpenAI-compatible gateway (docs/gateway.md)."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import socket
import sys
from pathlib import Path

import click
import uvicorn

from ..config import Config
from ..emulated import Emulators
from ..gateway import create_app
from ..gateway.auth import is_loopback
from ..gateway.server import bind, server_config, show_access_log
from ..plugins import Plugins
from .common import config_option, handle_errors, load, parse_faults

__all__ = ["COMMANDS", "binding_problem", "listen", "serve", "workers_problem"]


def binding_problem(host: str, config: Config) -> str | None:
    """Why the gateway must not listen on `host` with this config, or None."""
    if config.gateway.api_keys or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host} without gateway keys: anyone who can reach it could "
        "spend your budget. Set gateway.api_keys in the config (e.g. api_keys: "
        "[\"${IMAGEROUTER_GATEWAY_KEY}\"]) or listen on 127.0.0.1."
    )


def workers_problem(workers: int, config: Config, *, emulate: bool) -> str | None:
    """Why `--workers N` cannot run with this config, or None. Workers are separate
    processes: what they must agree on (health, rate windows, nudges) has to live in a
    shared store, not in each one's memory."""
    if workers <= 1:
        return None
    if emulate:
        return ("--workers needs real providers: with --emulate every worker would start "
                "emulators of its own; run one worker")
    if config.shared.url == "memory":
        return (f"--workers {workers} needs shared state: with shared.url: memory each worker "
                "would keep its own health and rate limits; set shared.url to sqlite (one "
                "machine) or redis://host:6379/0 (docs/deploy.md)")
    return None


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened before the banner: a port in use is one line, exit 2."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return bind(host, port)
    except socket.gaierror:
        problem = f"cannot listen on {where}: {host!r} is not an address or a known host name"
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            problem = (f"cannot listen on {where}: the port is already in use (another "
                       "server is running there?); pick another with --port")
        else:
            problem = f"cannot listen on {where}: {exc.strerror or exc}"
    click.echo(f"error: {problem}", err=True)
    sys.exit(2)


@click.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on.")
@click.option("--emulate", is_flag=True,
              help="Route to the providers' emulators on loopback (no keys, no charge).")
@click.option("--faults", multiple=True,
              help="With --emulate: PROVIDER=SPEC fault injection, SPEC e.g. create:503@0.5.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Gateway processes sharing the socket and the configured stores "
                   "(more than 1 needs shared.url: sqlite or redis).")
@handle_errors
def serve(
    config_path: Path | None,
    host: str,
    port: int,
    emulate: bool,
    faults: tuple[str, ...],
    workers: int,
) -> None:
    """Serve OpenAI's images API (/v1/images/generations, /v1/images/edits, ...) routed
    through imagerouter."""
    loaded = load(config_path)
    problem = binding_problem(host, loaded.config)
    if problem is not None:
        click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    if faults and not emulate:
        raise click.UsageError("--faults works only with --emulate")
    problem = workers_problem(workers, loaded.config, emulate=emulate)
    if problem is not None:
        click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    fault_map = parse_faults(faults, loaded.plugins.providers())  # bad specs: exit 2 now
    sock = listen(host, port)
    with sock:
        if not loaded.config.gateway.api_keys:
            click.echo(
                f"warning: no gateway.api_keys configured: no authentication; listening on "
                f"{host} (loopback) only",
                err=True,
            )
        if not is_loopback(host) and not loaded.config.gateway.allowed_hosts:
            click.echo(
                "note: requests must name this machine's address in their Host header; list "
                "the DNS names clients use in gateway.allowed_hosts",
                err=True,
            )
        if workers > 1:
            _supervise(config_path, sock, workers)
            return
        if not emulate:
            _run(loaded.config, loaded.plugins, sock, emulated=False)
            return
        with Emulators.start(
            loaded.plugins, latency="uniform:0.2,0.6", faults=fault_map
        ) as emulators:
            _run(emulators.configure(loaded.config), loaded.plugins, sock, emulated=True)


def _run(
    config: Config,
    plugins: Plugins,
    sock: socket.socket,
    *,
    emulated: bool,
    quiet: bool = False,
) -> None:
    app = create_app(config, plugins=plugins)
    router = app.state.gateway.router  # build it now: a config problem shows before serving
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    providers = ", ".join(sorted(router.catalog.entries)) or "none"
    if not quiet:  # one banner for the whole set of workers
        click.echo(
            f"imagerouter gateway on http://{shown}:{port}/v1 (providers: {providers}"
            f"{', emulated' if emulated else ''}); point OPENAI_BASE_URL at it",
            err=True,
        )
    show_access_log()
    server = uvicorn.Server(server_config(app, config.gateway, host=host, port=port))
    server.run(sockets=[sock])


def _supervise(config_path: Path | None, sock: socket.socket, workers: int) -> None:
    """Run `workers` gateway processes on the one listening socket; the kernel spreads the
    connections. Each worker loads the config itself (spawned, not forked: no inherited
    threads or event loops). SIGINT/SIGTERM are passed on; a worker that dies is reported
    and the others keep serving (their sweepers collect its paid jobs)."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(config_path, sock, index), name=f"worker-{index}")
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    click.echo(f"imagerouter gateway: {workers} workers (pids "
               f"{', '.join(str(p.pid) for p in processes)})", err=True)

    def stop(signum: int, _frame: object) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process in processes:
            process.join()
            if process.exitcode not in (0, None):
                click.echo(f"warning: {process.name} (pid {process.pid}) exited with "
                           f"{process.exitcode}", err=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker(config_path: Path | None, sock: socket.socket, index: int) -> None:
    """One spawned gateway process (`serve --workers N`)."""
    # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which passes
    # it on once (a second SIGINT would make uvicorn skip its graceful drain).
    os.setpgrp()
    loaded = load(config_path)
    _run(loaded.config, loaded.plugins, sock, emulated=False, quiet=index > 0)


COMMANDS = [serve]

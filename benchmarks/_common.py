"""Shared pieces of the benchmarks: the machine they ran on, percentiles, tables, and the
provider emulators served from a separate process (so their CPU never counts as the client's).

Not a test helper: benchmarks are run by hand (see benchmarks/README.md) and print the lines
that go into docs/performance.md.
"""

from __future__ import annotations

import datetime as _dt
import io
import multiprocessing
import os
import platform
import random
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EmulatorProcess",
    "Table",
    "machine",
    "paste_block",
    "peak_rss_mb",
    "percentile",
    "rss_mb",
    "start_emulators",
]

REPO = Path(__file__).resolve().parent.parent


def machine() -> str:
    """One line naming the machine: cores, CPU model, Python, date."""
    model = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if found:
            model = found.group(1).strip()
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, {_dt.date.today().isoformat()}"
    )


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), nearest-rank on sorted data."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[rank]


def _status_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


def rss_mb() -> float:
    """Resident memory now (VmRSS), MB."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (VmHWM), MB."""
    return _status_kb("VmHWM") / 1024


@dataclass
class Table:
    """A plain-text table, printed with aligned columns."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]

    def render(self) -> str:
        widths = [
            max(len(str(cell)) for cell in column)
            for column in zip(self.headers, *self.rows, strict=False)
        ]
        lines = [
            "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False))
            for row in (self.headers, *self.rows)
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        out = ["| " + " | ".join(self.headers) + " |"]
        out.append("|" + "|".join("---" for _ in self.headers) + "|")
        out.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows)
        return "\n".join(out)


def paste_block(title: str, command: str, table: Table, notes: Sequence[str] = ()) -> str:
    """The lines to paste into docs/performance.md for one benchmark."""
    out = io.StringIO()
    out.write(f"### {title}\n\n")
    out.write(f"Machine: {machine()}. Reproduce: `{command}`\n\n")
    out.write(table.markdown() + "\n")
    for note in notes:
        out.write(f"\n{note}\n")
    return out.getvalue()


# -- emulators in another process ------------------------------------------------------------

_IMAGE_CACHE: dict[tuple[int, int, str, str], bytes] = {}


def _patched_render(mode: str) -> Any:
    """A stand-in for the emulators' render_image, for the emulator process only.

    "noise": a PNG of random pixels (incompressible, about 3 MB at 1024x1024), to make the
    client download and validate a realistically large image. "cached": the normal gradient,
    rendered once per size and format, so the emulator stays cheap under 1,000 jobs.
    Either way the client receives a real, decodable image of the requested size.
    """
    from PIL import Image

    from imagerouter.emulation import images

    def render(prompt: str, width: int, height: int, fmt: str, **kwargs: Any) -> bytes:
        key = (width, height, fmt, mode)
        cached = _IMAGE_CACHE.get(key)
        if cached is not None:
            return cached
        if mode == "noise":
            pixels = random.Random(width * height).randbytes(width * height * 3)
            image = Image.frombytes("RGB", (width, height), pixels)
            out = io.BytesIO()
            image.save(out, "PNG", compress_level=1)
            data = out.getvalue()
        else:
            data = images.render_image("benchmark", width, height, fmt)
        _IMAGE_CACHE[key] = data
        return data

    return render


OPENAI_STUB_KEY = "sk-benchmark-stub"


def _openai_stub(image: bytes, delay_s: float) -> Any:
    """An OpenAI-shaped `POST /v1/images/generations` answering, after `delay_s` (the job's
    time), with `image` as b64_json: what the LiteLLM column of benchmark 1 talks to."""
    import asyncio
    import base64
    import time

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    encoded = base64.b64encode(image).decode()

    async def generations(request: Request) -> JSONResponse:
        await request.json()
        await asyncio.sleep(delay_s)
        return JSONResponse({"created": int(time.time()), "data": [{"b64_json": encoded}]})

    return Starlette(routes=[Route("/v1/images/generations", generations, methods=["POST"])])


def _serve(
    conn: Any,
    names: list[str] | None,
    latency: str,
    image_mode: str | None,
    seed: int,
    openai_stub: bool,
) -> None:
    from imagerouter.emulated import Emulators
    from imagerouter.emulation import EmulatorServer, images, jobs
    from imagerouter.plugins import Plugins

    render = _patched_render(image_mode) if image_mode is not None else images.render_image
    if image_mode is not None:
        jobs.render_image = render  # type: ignore[attr-defined]
    plugins = Plugins.load()
    with Emulators.start(plugins, names=names, latency=latency, seed=seed) as running:
        endpoints = {name: (running.url(name), running.keys[name]) for name in running.servers}
        stub = None
        if openai_stub:
            delay = float(latency.split(":")[1]) if latency.startswith("fixed:") else 0.3
            image = render("benchmark", 1024, 1024, "png")
            stub = EmulatorServer(_openai_stub(image, delay)).start()
            endpoints["openai"] = (stub.url + "/v1", OPENAI_STUB_KEY)
        conn.send(endpoints)
        conn.recv()  # any message: stop
        if stub is not None:
            stub.stop()
        conn.send({name: app.counters.snapshot() for name, app in running.apps.items()})


@dataclass
class EmulatorProcess:
    """Emulators running in a child process: base URL and key per provider."""

    endpoints: Mapping[str, tuple[str, str]]
    counters: dict[str, Any]

    def provider_config(self) -> dict[str, dict[str, Any]]:
        """`providers:` config entries pointing at these emulators."""
        return {
            name: {"base_url": url, "api_key": key} for name, (url, key) in self.endpoints.items()
        }


@contextmanager
def start_emulators(
    *,
    names: list[str] | None = None,
    latency: str = "fixed:0.3",
    image_mode: str | None = None,
    seed: int = 7,
    openai_stub: bool = False,
) -> Iterator[EmulatorProcess]:
    """Run the provider emulators in a spawned child process for the duration of the block.
    `counters` is filled in (each emulator's counters) when the block ends. `openai_stub`
    adds an OpenAI-shaped images endpoint (endpoints["openai"]) serving the same image."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=_serve, args=(child, names, latency, image_mode, seed, openai_stub), daemon=True
    )
    process.start()
    if not parent.poll(60):
        process.terminate()
        raise RuntimeError("the emulator process did not start within 60 s")
    running = EmulatorProcess(endpoints=parent.recv(), counters={})
    try:
        yield running
    finally:
        parent.send("stop")
        if parent.poll(30):
            running.counters = parent.recv()
        process.join(15)
        if process.is_alive():
            process.terminate()
            process.join(5)


def emit(text: str = "") -> None:
    """Print and flush (benchmarks print progress while they run)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

"""Benchmark 1: client CPU per routed image: imagerouter (async and sync) vs a hand-written
httpx loop, LiteLLM, and the floor (download, hash and write alone).

All run against the same RunAPI emulator, served from a separate process (its CPU does not
count), once with a ~3 MB PNG (1024x1024 of random pixels) and once with a small one (the
emulator's ~40 KB gradient). Per image, imagerouter quotes and ranks both providers, writes
the ledger (a real SQLite file, fsync'd), submits, polls, downloads while hashing, checks the
PNG's chunk CRCs and saves atomically (temp file, fsync, rename). The hand-written loop POSTs,
polls, GETs the image and writes it. Both poll on the same fixed interval, so they make the
same requests. The sync path is `Router.generate` (its portal thread's CPU counts too).

LiteLLM cannot drive RunAPI's submit-and-poll API, so its column calls
`litellm.image_generation` against an OpenAI-shaped stub in the emulator process that answers
with the same PNG as b64_json after the same 0.3 s, then decodes and writes the file: what a
LiteLLM user writes. LiteLLM is not a dependency: it is installed into a scratch venv under
/tmp on first run (`pip install litellm`, from PyPI), and runs in its own process.

The floor is one streamed GET of the image, SHA-256 over the chunks, temp file, fsync, rename:
what any client that keeps the image safely must pay.

CPU is `time.process_time()` (every thread of the measuring process), per image; the
in-process clients alternate round by round so drift affects them alike.

    python benchmarks/bench_client_cpu.py               # ~3 minutes (plus the venv, once)
    python benchmarks/bench_client_cpu.py --no-litellm  # without the LiteLLM column
    python benchmarks/bench_client_cpu.py --profile     # plus pyinstrument profiles (async path)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EmulatorProcess, Table, emit, machine, paste_block, start_emulators

from imagerouter import Router
from imagerouter.config import load_config
from imagerouter.download import _write_atomically
from imagerouter.inputs import check_magic, decode_image
from imagerouter.ledger import Ledger
from imagerouter.plugins import Plugins
from imagerouter.polling import FixedSchedule

COMMAND = "python benchmarks/bench_client_cpu.py"
POLL_S = 0.25  # both clients poll this often; the emulator's jobs take 0.3 s
PROMPT = "a lighthouse at dusk"
IMAGES = {"3 MB": "noise", "small": "cached"}  # label -> the emulator's image mode
ASYNC_TARGET = {"3 MB": 1.25, "small": 2.0}  # imagerouter async / hand-written loop
SYNC_TARGET = 1.15  # sync / async
VENV = Path(tempfile.gettempdir()) / "imagerouter-bench-litellm"
CLIENTS = ["floor", "hand-written httpx loop", "imagerouter async", "imagerouter sync", "LiteLLM"]


@dataclass
class Samples:
    cpu: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CLIENTS})
    size_mb: float = 0.0


def _router(emulators: EmulatorProcess, workdir: Path, plugins: Plugins) -> Router:
    providers: dict[str, Any] = {
        name: entry for name, entry in emulators.provider_config().items() if name != "openai"
    }
    # Runflow is quoted and ranked too (its offer is dearer here), but never called.
    providers.setdefault("runflow", {"api_key": "unused", "base_url": "http://127.0.0.1:9"})
    config = load_config(
        {
            "providers": providers,
            "ledger": {"path": str(workdir / "ledger.db")},
            "output": {"dir": str(workdir / "router")},
        },
        known_providers=plugins.providers(),
    )
    return Router(config, plugins=plugins, schedule=lambda offer: FixedSchedule(POLL_S, jitter=0))


async def _router_images(router: Router, count: int, start: int) -> list[float]:
    cpu = []
    for index in range(start, start + count):
        before = time.process_time()
        result = await router.agenerate(f"{PROMPT} {index}")
        cpu.append(time.process_time() - before)
        assert result.provider == "runapi"
    return cpu


def _router_images_sync(router: Router, count: int, start: int) -> list[float]:
    cpu = []
    for index in range(start, start + count):
        before = time.process_time()
        result = router.generate(f"{PROMPT} {index}")
        cpu.append(time.process_time() - before)
        assert result.provider == "runapi"
    return cpu


async def _baseline_images(
    http: httpx.AsyncClient, base: str, key: str, out: Path, count: int, start: int
) -> tuple[list[float], str]:
    """The loop a user would write by hand: no ledger, no checks, no failover. Returns the
    CPU per image and the last image's URL."""
    auth = {"Authorization": f"Bearer {key}"}
    path = "/api/v1/gpt_image_2/text_to_image"
    cpu = []
    url = ""
    for index in range(start, start + count):
        before = time.process_time()
        body = {
            "model": "gpt-image-2",
            "prompt": f"{PROMPT} {index}",
            "aspect_ratio": "1:1",
            "output_resolution": "1k",
        }
        created = (await http.post(base + path, json=body, headers=auth)).json()
        while True:
            await asyncio.sleep(POLL_S)
            task = (await http.get(f"{base}{path}/{created['id']}", headers=auth)).json()
            if task["status"] == "completed":
                break
        url = task["images"][0]["url"]
        image = await http.get(url, headers=auth)
        (out / f"{index}.png").write_bytes(image.content)
        cpu.append(time.process_time() - before)
    return cpu, url


async def _floor_images(
    http: httpx.AsyncClient, url: str, key: str, out: Path, count: int, start: int
) -> list[float]:
    """Download, hash and write alone: a streamed GET, SHA-256 over the chunks, a temp file,
    fsync, rename."""
    cpu = []
    for index in range(start, start + count):
        before = time.process_time()
        digest = hashlib.sha256()
        temp = out / f".{index}.part"
        with temp.open("wb") as file:
            async with http.stream("GET", url, headers={"Authorization": f"Bearer {key}"}) as r:
                async for chunk in r.aiter_bytes():
                    digest.update(chunk)
                    file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        temp.rename(out / f"{index}-{digest.hexdigest()[:8]}.png")
        cpu.append(time.process_time() - before)
    return cpu


async def _async_round(
    router: Router, emulators: EmulatorProcess, workdir: Path, count: int, start: int
) -> dict[str, list[float]]:
    """One round of the in-process async clients, on this round's event loop."""
    base, key = emulators.endpoints["runapi"]
    out = workdir / "baseline"
    out.mkdir(exist_ok=True)
    async with httpx.AsyncClient(timeout=60) as http:
        # Not counted: this loop's first connection for each client.
        await _router_images(router, 1, start - 1)
        _, url = await _baseline_images(http, base, key, out, 1, start - 1)
        theirs, url = await _baseline_images(http, base, key, out, count, start)
        ours = await _router_images(router, count, start + count)
        floor = await _floor_images(http, url, key, out, count, start)
    return {"hand-written httpx loop": theirs, "imagerouter async": ours, "floor": floor}


def _litellm_python() -> Path:
    """The scratch venv's Python with LiteLLM installed (made on first use)."""
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import litellm"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    emit(f"installing LiteLLM into a scratch venv at {VENV} (once) ...")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "litellm"]
    subprocess.run(pip, check=True)
    return python


def _litellm_images(python: Path, emulators: EmulatorProcess, out: Path, count: int) -> tuple[
    list[float], str
]:
    base, key = emulators.endpoints["openai"]
    script = Path(__file__).resolve().parent / "_litellm_client.py"
    done = subprocess.run(
        [str(python), str(script), base, key, str(out), str(count), "2"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},  # no network at import
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return list(result["cpu"]), str(result["litellm"])


def _measure(
    label: str, count: int, rounds: int, litellm: Path | None, profile: bool
) -> tuple[Samples, str, list[tuple[str, float]]]:
    plugins = Plugins.load()
    samples = Samples()
    version = ""
    steps: list[tuple[str, float]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_emulators(
            names=["runapi"], latency="fixed:0.3", image_mode=IMAGES[label], openai_stub=True
        ) as emulators,
    ):
        workdir = Path(tmp)
        router = _router(emulators, workdir, plugins)
        _router_images_sync(router, 2, 0)  # warm-up: imports, the quote memo, SQLite pages
        for round_no in range(rounds):
            start = 1000 * (round_no + 1)
            for client, cpu in asyncio.run(
                _async_round(router, emulators, workdir, count, start)
            ).items():
                samples.cpu[client] += cpu
            samples.cpu["imagerouter sync"] += _router_images_sync(router, count, start + 500)
            emit(f"{label}: round {round_no + 1}/{rounds} done")
        if profile:
            asyncio.run(_profile(router))
        if litellm is not None:
            cpu, version = _litellm_images(litellm, emulators, workdir / "litellm", count * rounds)
            samples.cpu["LiteLLM"] = cpu
        router.close()
        sample = next((workdir / "router").glob("*.png"))
        samples.size_mb = sample.stat().st_size / 1e6
        if label == "3 MB":
            steps = _breakdown(sample)
    return samples, version, steps


def _breakdown(sample: Path) -> list[tuple[str, float]]:
    """CPU of single steps, measured alone on one of the downloaded images."""
    data = sample.read_bytes()
    steps: list[tuple[str, float]] = []
    rounds = 10

    def measure(name: str, func: Callable[[int], object]) -> None:
        before = time.process_time()
        for index in range(rounds):
            func(index)
        steps.append((name, (time.process_time() - before) / rounds))

    def decode(_: int) -> None:
        with decode_image(data, check_magic(data), max_pixels=64_000_000):
            pass

    def verify(_: int) -> None:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.verify()

    ledger = Ledger(sample.parent / "breakdown.db")

    def ledger_writes(index: int) -> None:
        request, attempt, task = f"r{index}", f"a{index}", f"t{index}"
        price = Decimal("0.06")
        ledger.begin_request(
            request,
            operation="generate",
            model="gpt-image-2",
            tier=None,
            prompt=PROMPT,
            request={"prompt": PROMPT},
            output_dir=str(sample.parent),
            quoted_usd=price,
        )
        ledger.begin_attempt(
            attempt,
            request_id=request,
            attempt_no=1,
            provider="runapi",
            model="gpt-image-2",
            operation="generate",
            quoted_usd=price,
            params={},
            accepts_double_charge=False,
        )
        ledger.task_submitting(
            task,
            attempt_id=attempt,
            request_id=request,
            provider="runapi",
            model="gpt-image-2",
            operation="generate",
            idempotency_key=f"k-{task}",
            num_images=1,
            quoted_usd=price,
        )
        ledger.task_accepted(
            task, provider_task_id=f"p-{task}", poll_ref="x", replayed=False, billed_usd=None
        )
        ledger.task_finished(
            task, state="collected", billed_usd=price, image_urls=("u",), urls_expire_at=None
        )
        ledger.image_saved(
            task,
            index=0,
            path=str(sample),
            sha256="0" * 64,
            source_url="u",
            width=1024,
            height=1024,
            format="png",
            size_bytes=len(data),
            url_expires_at=None,
        )
        ledger.end_attempt(
            attempt,
            outcome="served",
            accepted="yes",
            error_type=None,
            error=None,
            billed_usd=price,
            elapsed_s=1.0,
        )

    measure("check: full decode (conversions, JPEG/WebP only)", decode)
    measure("check: PNG chunk CRCs, Image.verify() (a PNG kept as is)", verify)
    measure("sha256", lambda _: hashlib.sha256(data).hexdigest())
    measure("ledger: 7 writes, one after another (a transaction and fsync each)", ledger_writes)
    measure(
        "save: temp file, fsync, rename",
        lambda index: _write_atomically(sample.parent / f"atomic-{index}.png", data),
    )
    measure(
        "save: plain write (the baseline's)",
        lambda index: (sample.parent / f"plain-{index}.png").write_bytes(data),
    )
    ledger.close()
    return steps


async def _profile(router: Router) -> None:
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled", interval=0.0005)
    profiler.start()
    await _router_images(router, 10, 10_000)
    profiler.stop()
    emit(profiler.output_text(unicode=False, color=False, show_all=False))


def _report(
    results: dict[str, Samples], steps: list[tuple[str, float]], version: str
) -> None:
    ms = 1000.0
    rows = []
    verdicts = []
    for label, samples in results.items():
        mean = {c: statistics.mean(v) for c, v in samples.cpu.items() if v}
        loop, floor = mean["hand-written httpx loop"], mean["floor"]
        for client in CLIENTS:
            if client not in mean:
                continue
            rows.append([
                f"{label} ({samples.size_mb:.2f} MB)",
                client if client != "LiteLLM" else f"LiteLLM {version}",
                str(len(samples.cpu[client])),
                f"{mean[client] * ms:.1f}",
                f"{statistics.median(samples.cpu[client]) * ms:.1f}",
                f"{mean[client] / loop:.2f}",
                f"{mean[client] / floor:.2f}",
                f"{(mean[client] - floor) * ms:+.1f}",
            ])
        ours, sync = mean["imagerouter async"], mean["imagerouter sync"]
        target = ASYNC_TARGET[label]
        verdicts.append(
            f"{label}: async {ours / loop:.2f}x the hand-written loop (target <= {target}: "
            f"{'met' if ours / loop <= target else 'NOT met'}); sync {sync / ours:.2f}x async "
            f"(target <= {SYNC_TARGET}: {'met' if sync / ours <= SYNC_TARGET else 'NOT met'})"
        )
        if "LiteLLM" in mean:
            below = ours < mean["LiteLLM"]
            verdicts.append(
                f"{label}: async {ours * ms:.1f} ms vs LiteLLM {mean['LiteLLM'] * ms:.1f} ms "
                f"(target: below: {'met' if below else 'NOT met'})"
            )
    table = Table(
        ["image", "client", "images", "CPU/image mean (ms)", "median (ms)", "/ hand loop",
         "/ floor", "above floor (ms)"],
        rows,
    )
    emit()
    emit(table.render())
    emit()
    for verdict in verdicts:
        emit(verdict)
    steps_table = Table(
        ["step (measured alone on the 3 MB image)", "CPU (ms)"],
        [[name, f"{cpu * ms:.1f}"] for name, cpu in steps],
    )
    emit()
    emit(steps_table.render())
    notes = [
        "Ratios are of mean CPU per image. " + "; ".join(verdicts) + ".",
        f"Both in-process clients poll every {POLL_S} s against 0.3 s jobs (1 create, 2 polls, "
        "1 download). LiteLLM makes one blocking call to an OpenAI-shaped stub answering with "
        "the same PNG as b64_json. The floor is a streamed GET, SHA-256, temp file, fsync, "
        "rename. Steps measured alone:",
        steps_table.markdown(),
    ]
    emit()
    emit("---- paste into docs/performance.md ----")
    emit(paste_block("1. Client CPU per routed image", COMMAND, table, notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10, help="images per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="pyinstrument profile")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM column")
    args = parser.parse_args()
    emit(f"machine: {machine()}")
    litellm = None if args.no_litellm else _litellm_python()
    results: dict[str, Samples] = {}
    steps: list[tuple[str, float]] = []
    version = ""
    for label in IMAGES:
        samples, version, found = _measure(
            label, args.images, args.rounds, litellm, args.profile
        )
        results[label] = samples
        steps = steps or found
    _report(results, steps, version)


if __name__ == "__main__":
    main()

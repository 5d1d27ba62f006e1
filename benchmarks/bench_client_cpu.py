"""Benchmark 1: client CPU per routed image, imagerouter vs a minimal hand-written httpx loop.

Both run against the same RunAPI emulator, served from a separate process (its CPU does not
count), which returns a ~3 MB PNG (1024x1024 of random pixels). Per image, imagerouter
quotes and ranks both providers, writes the ledger (a real SQLite file, fsync'd), submits,
polls, downloads, validates (magic bytes, a full decode under a pixel cap), hashes and saves
atomically (temp file, fsync, rename). The baseline POSTs, polls, GETs the image and writes
it. Both poll on the same fixed interval, so they make the same number of requests. CPU is
`time.process_time()` (every thread of this process), measured per image, alternating
rounds of the two so drift affects both alike.

    python benchmarks/bench_client_cpu.py                   # ~1 minute
    python benchmarks/bench_client_cpu.py --profile         # plus a pyinstrument profile
    python benchmarks/bench_client_cpu.py --with-proposals  # with the proposed fixes patched in

`--with-proposals` monkeypatches, in this process only, the two hot-path changes proposed in
docs/performance.md for files this benchmark does not own: PNG integrity checked by chunk
CRCs (`Image.verify()`) instead of a full decode, and health records copied without
`copy.deepcopy`. It shows what those changes would buy; it changes nothing on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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
TARGET = 1.15
POLL_S = 0.25  # both clients poll this often; the emulator's jobs take 0.3 s
PROMPT = "a lighthouse at dusk"


def _router(emulators: EmulatorProcess, workdir: Path, plugins: Plugins) -> Router:
    providers: dict[str, Any] = emulators.provider_config()
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


async def _baseline_images(
    http: httpx.AsyncClient, base: str, key: str, out: Path, count: int, start: int
) -> list[float]:
    """The loop a user would write by hand: no ledger, no checks, no failover."""
    auth = {"Authorization": f"Bearer {key}"}
    path = "/api/v1/gpt_image_2/text_to_image"
    cpu = []
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
        image = await http.get(task["images"][0]["url"], headers=auth)
        (out / f"{index}.png").write_bytes(image.content)
        cpu.append(time.process_time() - before)
    return cpu


def _apply_proposals() -> None:
    """Patch in the proposed hot-path changes (this process only; see the module docstring)."""
    import dataclasses
    import io
    import warnings

    from PIL import Image

    from imagerouter import download, health_store
    from imagerouter.inputs import ImageCheckError

    def check_image(data: bytes, fmt: str, *, max_pixels: int) -> Image.Image:
        if fmt != "png":
            return decode_image(data, fmt, max_pixels=max_pixels)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                    width, height = image.size
                    if width * height > max_pixels:
                        raise ImageCheckError(f"is {width}x{height} pixels", "too_many_pixels")
                    image.verify()  # every chunk's CRC, through IEND
        except ImageCheckError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageCheckError(f"cannot be decoded: {exc}", "undecodable") from None
        # Opened again, lazily: the size is read from the header; pixels decode on use.
        return Image.open(io.BytesIO(data), formats=["PNG"])

    def copy_record(self: health_store.BackendHealth) -> health_store.BackendHealth:
        return dataclasses.replace(self, latencies=list(self.latencies), reasons=dict(self.reasons))

    download.decode_image = check_image  # type: ignore[attr-defined]
    health_store.BackendHealth.copy = copy_record  # type: ignore[method-assign]


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

    measure("validate: full decode (today)", decode)
    measure("validate: PNG chunk CRCs, Image.verify() (proposed)", verify)
    measure("sha256", lambda _: hashlib.sha256(data).hexdigest())
    measure("ledger: 7 write transactions", ledger_writes)
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


async def _run(count: int, rounds: int, profile: bool, proposals: bool) -> None:
    plugins = Plugins.load()
    emit(f"machine: {machine()}")
    if proposals:
        _apply_proposals()
        emit("with the proposed hot-path changes patched in")
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_emulators(names=["runapi"], latency="fixed:0.3", image_mode="noise") as emulators,
    ):
        workdir = Path(tmp)
        router = _router(emulators, workdir, plugins)
        base, key = emulators.endpoints["runapi"]
        out = workdir / "baseline"
        out.mkdir()
        async with httpx.AsyncClient(timeout=60) as http:
            # Warm-up: imports, connections, the quote memo, SQLite pages.
            await _router_images(router, 2, 0)
            await _baseline_images(http, base, key, out, 2, 0)
            ours: list[float] = []
            theirs: list[float] = []
            for round_no in range(rounds):
                start = 100 + round_no * count
                ours += await _router_images(router, count, start)
                theirs += await _baseline_images(http, base, key, out, count, start)
                emit(f"round {round_no + 1}/{rounds} done")
            if profile:
                await _profile(router)
        sample = next((workdir / "router").glob("*.png"))
        steps = _breakdown(sample)
        size_mb = sample.stat().st_size / 1e6
        await router.aclose()
    _report(ours, theirs, steps, size_mb, proposals)


async def _profile(router: Router) -> None:
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled", interval=0.0005)
    profiler.start()
    await _router_images(router, 10, 10_000)
    profiler.stop()
    emit(profiler.output_text(unicode=False, color=False, show_all=False))


def _report(
    ours: list[float],
    theirs: list[float],
    steps: list[tuple[str, float]],
    size_mb: float,
    proposals: bool,
) -> None:
    ms = 1000.0
    ratio = statistics.mean(ours) / statistics.mean(theirs)
    median_ratio = statistics.median(ours) / statistics.median(theirs)
    table = Table(
        ["client", "images", "CPU/image mean (ms)", "median (ms)", "ratio (mean)", "target"],
        [
            [
                "minimal httpx loop",
                str(len(theirs)),
                f"{statistics.mean(theirs) * ms:.1f}",
                f"{statistics.median(theirs) * ms:.1f}",
                "1.00",
                "",
            ],
            [
                "imagerouter",
                str(len(ours)),
                f"{statistics.mean(ours) * ms:.1f}",
                f"{statistics.median(ours) * ms:.1f}",
                f"{ratio:.2f}",
                f"<= {TARGET} ({'met' if ratio <= TARGET else 'NOT met'})",
            ],
        ],
    )
    emit()
    emit(table.render())
    emit(f"median ratio {median_ratio:.2f}; image {size_mb:.1f} MB")
    emit()
    steps_table = Table(
        ["step (measured alone on the same image)", "CPU (ms)"],
        [[name, f"{cpu * ms:.1f}"] for name, cpu in steps],
    )
    emit(steps_table.render())
    extra = statistics.mean(ours) - statistics.mean(theirs)
    title = "1. Client CPU per routed image"
    if proposals:
        title += " (with the proposed fixes patched in)"
    notes = [
        f"Image: {size_mb:.1f} MB PNG (1024x1024 random pixels). Both clients poll every "
        f"{POLL_S} s against 0.3 s jobs (same requests: 1 create, 2 polls, 1 download). "
        f"imagerouter's extra CPU per image: {extra * ms:.1f} ms. Steps measured alone:",
        steps_table.markdown(),
    ]
    emit()
    emit("---- paste into docs/performance.md ----")
    emit(paste_block(title, COMMAND + (" --with-proposals" if proposals else ""), table, notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=15, help="images per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="pyinstrument profile")
    parser.add_argument(
        "--with-proposals", action="store_true", help="patch in the proposed hot-path fixes"
    )
    args = parser.parse_args()
    asyncio.run(_run(args.images, args.rounds, args.profile, args.with_proposals))


if __name__ == "__main__":
    main()

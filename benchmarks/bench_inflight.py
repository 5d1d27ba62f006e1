"""Benchmark 3: 1,000 jobs in flight on one process: peak memory and event-loop lag.

1,000 concurrent `Router.agenerate` calls (half routed to RunAPI, half to Runflow) against
both emulators, served from a separate process with moderate latency (jobs take 2-4 s) and
small images (1024x1024 gradient PNGs, ~40 KB, rendered once). The router runs as shipped:
its own HTTP client (64 requests in flight), poll schedule, real SQLite ledger and image files;
the table also counts ledger writes and the transactions (fsyncs) they were committed in.

- peak RSS: this process's VmHWM from /proc/self/status, minus nothing (the whole process),
  and the rise over the RSS just before the jobs start;
- event-loop lag: a ticker task sleeps 10 ms at a time and records how late it wakes up.

    python benchmarks/bench_inflight.py              # 30-75 s
    python benchmarks/bench_inflight.py --jobs 200   # smaller
    python benchmarks/bench_inflight.py --attribute  # + what the loop thread spent its time on
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Table,
    emit,
    machine,
    paste_block,
    peak_rss_mb,
    percentile,
    rss_mb,
    start_emulators,
)
from _loop_attribution import LoopAttribution

from imagerouter import Router
from imagerouter.config import load_config
from imagerouter.plugins import Plugins

COMMAND = "python benchmarks/bench_inflight.py"
TARGET_RSS_MB = 150.0
TARGET_LAG_MS = 20.0
TICK_S = 0.010


class Ticker:
    """Measures event-loop lag: how late a 10 ms sleep wakes up."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.windows: list[tuple[float, float]] = []  # (deadline, woke), loop clock
        self._stop = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop:
            start = loop.time()
            await asyncio.sleep(TICK_S)
            woke = loop.time()
            self.lags.append(max(0.0, woke - start - TICK_S))
            self.windows.append((start + TICK_S, woke))

    def stop(self) -> None:
        self._stop = True


def _request(index: int) -> dict[str, Any]:
    # No quality: RunAPI's gpt-image-2 ($0.06) wins; quality low: Runflow ($0.009) wins.
    return {"prompt": f"a lighthouse at dusk, number {index}"} | (
        {"quality": "low"} if index % 2 else {}
    )


async def _run(jobs: int, ledger: bool, attribution: LoopAttribution | None) -> dict[str, Any]:
    plugins = Plugins.load()
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_emulators(latency="uniform:2,4", image_mode="cached") as emulators,
    ):
        workdir = Path(tmp)
        config = load_config(
            {
                "providers": emulators.provider_config(),
                "ledger": {"path": str(workdir / "ledger.db")},
                "output": {"dir": str(workdir / "images")},
            },
            known_providers=plugins.providers(),
        )
        # The Router's own transport (imagerouter/transport.py) bounds HTTP concurrency.
        router = Router(config, plugins=plugins, ledger=ledger)
        await router.agenerate("warm-up")  # imports, connections, memoized quotes
        await router.agenerate("warm-up", quality="low")
        before_mb = rss_mb()
        if attribution is not None:
            attribution.install(asyncio.get_running_loop())
            attribution.start()
        ticker = Ticker()
        ticking = asyncio.ensure_future(ticker.run())
        started = time.perf_counter()
        cpu_before = time.process_time()
        results = await asyncio.gather(
            *[router.agenerate(**_request(index)) for index in range(jobs)],
            return_exceptions=True,
        )
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        ticker.stop()
        await ticking
        if attribution is not None:
            attribution.stop()
            attribution.uninstall()
        peak = peak_rss_mb()
        writes = router.ledger._writes if router.ledger is not None else None
        commits = (writes.commits, writes.writes) if writes is not None else (0, 0)
        await router.aclose()
        failures = [r for r in results if isinstance(r, BaseException)]
        files = len(list((workdir / "images").glob("*.png")))
    by_provider: dict[str, int] = {}
    for result in results:
        if not isinstance(result, BaseException):
            by_provider[result.provider] = by_provider.get(result.provider, 0) + 1
    return {
        "jobs": jobs,
        "failures": failures,
        "files": files,
        "by_provider": by_provider,
        "wall": wall,
        "cpu": cpu,
        "before_mb": before_mb,
        "peak_mb": peak,
        "lags_ms": [lag * 1000 for lag in ticker.lags],
        "windows": ticker.windows,
        "counters": emulators.counters,
        "commits": commits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument(
        "--no-ledger", action="store_true", help="diagnosis: the same run without the ledger"
    )
    parser.add_argument(
        "--attribute",
        action="store_true",
        help="diagnosis: record what the loop thread runs, per callback and per iteration",
    )
    args = parser.parse_args()
    emit(f"machine: {machine()}")
    attribution = LoopAttribution() if args.attribute else None
    load_before = os.getloadavg()
    out = asyncio.run(_run(args.jobs, not args.no_ledger, attribution))
    load_after = os.getloadavg()
    lags = out["lags_ms"]
    polls = sum(c.get("polls", 0) for c in out["counters"].values())
    created = sum(c.get("created", 0) for c in out["counters"].values())
    lag_p99, lag_max = percentile(lags, 99), max(lags)
    rss_ok = out["peak_mb"] <= TARGET_RSS_MB
    lag_ok = lag_p99 <= TARGET_LAG_MS
    table = Table(
        ["measure", "value", "target", "met"],
        [
            ["jobs in flight", str(out["jobs"]), "", ""],
            [
                "served / failed / files on disk",
                f"{out['jobs'] - len(out['failures'])} / {len(out['failures'])} / {out['files']}",
                "",
                "",
            ],
            [
                "served by",
                ", ".join(f"{k} {v}" for k, v in sorted(out["by_provider"].items())),
                "",
                "",
            ],
            ["wall time (s)", f"{out['wall']:.1f}", "", ""],
            ["client CPU (s)", f"{out['cpu']:.1f}", "", ""],
            ["creates / polls at the emulators", f"{created} / {polls}", "", ""],
            [
                "ledger writes / transactions (fsyncs)",
                f"{out['commits'][1]} / {out['commits'][0]}",
                "",
                "",
            ],
            ["RSS before the jobs (MB)", f"{out['before_mb']:.0f}", "", ""],
            [
                "peak RSS, whole process (MB)",
                f"{out['peak_mb']:.0f}",
                f"<= {TARGET_RSS_MB:.0f}",
                "yes" if rss_ok else "NO",
            ],
            ["event-loop lag median (ms)", f"{statistics.median(lags):.1f}", "", ""],
            [
                "event-loop lag p99 (ms)",
                f"{lag_p99:.1f}",
                f"<= {TARGET_LAG_MS:.0f}",
                "yes" if lag_ok else "NO",
            ],
            ["event-loop lag max (ms)", f"{lag_max:.1f}", "", ""],
        ],
    )
    emit()
    emit(table.render())
    for failure in out["failures"][:5]:
        emit(f"failure: {type(failure).__name__}: {failure}")
    notes = [
        "Lag is how late a 10 ms `asyncio.sleep` wakes up while the jobs run; the target is "
        "read as its p99 (the max is listed too).",
        f"Load average (1 min) before / after the run: {load_before[0]:.2f} / {load_after[0]:.2f}.",
    ]
    emit()
    emit("---- paste into docs/performance.md ----")
    title = "3. 1,000 jobs in flight"
    command = COMMAND
    if args.no_ledger:
        title += " (diagnosis: ledger off)"
        command += " --no-ledger"
    if attribution is not None:
        title += " (with --attribute: instrumented, a few us more CPU per callback)"
        command += " --attribute"
        notes.append(attribution.report(out["windows"]))
    emit(paste_block(title, command, table, notes))


if __name__ == "__main__":
    main()

"""Attribution of event-loop lag (bench_inflight.py --attribute): what the loop thread itself does.

Wall-clock lag is noisy on a shared machine, so this measures the loop's own work:
- every callback the loop runs (`asyncio.events.Handle._run`): its loop-thread CPU
  (`time.thread_time`), its wall time, and a name: for a task step, where the task resumed
  (the innermost imagerouter frame and the innermost frame of any library under it); for a
  plain callback, its qualified name;
- every loop iteration (`_run_once`): the CPU and wall of the callbacks it ran, so "wall minus
  CPU" is time the loop thread was runnable but not running (the GIL held by another thread,
  or the OS running something else on the core);
- garbage collections (`gc.callbacks`), and the CPU of every other thread of the process
  (`time.pthread_getcpuclockid`), e.g. the ledger's writer thread, which holds the GIL while
  it runs Python code between SQLite calls.

Benchmark-only instrumentation: it adds a few microseconds per callback, so a run with
--attribute reports slightly more CPU than one without.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from types import CoroutineType
from typing import Any

__all__ = ["LoopAttribution"]

_PKG = "/imagerouter/"


def _frame_name(frame: Any) -> str:
    code = frame.f_code
    path = code.co_filename
    short = path.rsplit("/", 1)[-1]
    return f"{short}:{code.co_qualname}"


def _task_site(task: Any) -> str:
    """Where a task resumes: innermost imagerouter frame < innermost frame below it."""
    try:
        coro = task.get_coro()
    except Exception:
        return "task?"
    ours = None
    inner = None
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        inner = frame
        if _PKG in frame.f_code.co_filename:
            ours = frame
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if (
            coro is not None
            and not isinstance(coro, CoroutineType)
            and not hasattr(coro, "gi_frame")
        ):
            break
    if inner is None:
        return "task (starting)"
    if ours is None or ours is inner:
        return _frame_name(inner)
    return f"{_frame_name(ours)} < {_frame_name(inner)}"


def _callback_name(handle: asyncio.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return _task_site(owner)
    name = getattr(callback, "__qualname__", None) or type(callback).__name__
    if name in {"partial", "functools.partial"}:
        inner = getattr(callback, "func", None)
        name = "partial(" + (getattr(inner, "__qualname__", None) or "?") + ")"
    return str(name)


@dataclass
class _Iteration:
    cpu: float = 0.0
    wall: float = 0.0
    callback_wall: float = 0.0  # wall time inside callbacks: CPU plus waiting for the GIL/core
    callbacks: int = 0
    start: float = 0.0  # time.monotonic(), the clock of loop.time()
    select_wall: float = 0.0
    select_timeout: float | None = None
    gc_s: float = 0.0
    by_name: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class LoopAttribution:
    """Installs the hooks on the running loop; `report()` renders the findings."""

    def __init__(self) -> None:
        self.iterations: list[_Iteration] = []
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: Counter[str] = Counter()
        self.gc_pauses: list[tuple[int, float]] = []
        self._current: _Iteration | None = None
        self._gc_started: float | None = None
        self._thread_cpu_start: dict[int, tuple[str, float]] = {}
        self.thread_cpu: dict[str, float] = {}
        self._loop_thread = 0
        self._saved: list[tuple[Any, str, Any]] = []
        self._recording = False

    # -- installing ---------------------------------------------------------------------

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_thread = threading.get_ident()
        original_run = asyncio.events.Handle._run
        original_once = loop._run_once  # type: ignore[attr-defined]
        me = self

        def run(handle: asyncio.Handle) -> None:
            current = me._current
            if current is None:
                original_run(handle)
                return
            name = _callback_name(handle)
            owner = getattr(getattr(handle, "_callback", None), "__self__", None)
            w0 = time.perf_counter()
            c0 = time.thread_time()
            original_run(handle)
            cpu = time.thread_time() - c0
            current.cpu += cpu
            current.callback_wall += time.perf_counter() - w0
            if isinstance(owner, asyncio.Task):
                name += " -> " + ("(done)" if owner.done() else _task_site(owner))
            current.callbacks += 1
            current.by_name[name] += cpu
            me.totals[name] += cpu
            me.counts[name] += 1

        def run_once() -> None:
            if not me._recording:
                original_once()
                return
            iteration = _Iteration()
            me._current = iteration
            w0 = iteration.start = time.monotonic()
            try:
                original_once()
            finally:
                me._current = None
            iteration.wall = time.monotonic() - w0
            me.iterations.append(iteration)

        selector = loop._selector  # type: ignore[attr-defined]
        original_select = selector.select

        def select(timeout: float | None = None) -> Any:
            current = me._current
            w0 = time.monotonic()
            try:
                return original_select(timeout)
            finally:
                if current is not None:
                    current.select_wall += time.monotonic() - w0
                    current.select_timeout = timeout

        selector.select = select
        self._selector = selector

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if not me._recording or threading.get_ident() != me._loop_thread:
                return
            if phase == "start":
                me._gc_started = time.thread_time()
            elif me._gc_started is not None:
                spent = time.thread_time() - me._gc_started
                me._gc_started = None
                me.gc_pauses.append((info.get("generation", -1), spent))
                if me._current is not None:
                    me._current.gc_s += spent

        self._saved = [
            (asyncio.events.Handle, "_run", original_run),
        ]
        asyncio.events.Handle._run = run  # type: ignore[method-assign]
        loop._run_once = run_once  # type: ignore[attr-defined]
        self._loop = loop
        gc.callbacks.append(on_gc)
        self._on_gc = on_gc

    def start(self) -> None:
        self._thread_cpu_start = self._threads_cpu()
        self._recording = True

    def stop(self) -> None:
        self._recording = False
        end = self._threads_cpu()
        by_name: dict[str, float] = defaultdict(float)
        for ident, (name, cpu) in end.items():
            start = self._thread_cpu_start.get(ident, (name, 0.0))[1]
            by_name[self._thread_label(ident, name)] += cpu - start
        self.thread_cpu = dict(by_name)

    def uninstall(self) -> None:
        for owner, attr, value in self._saved:
            setattr(owner, attr, value)
        self._loop.__dict__.pop("_run_once", None)
        self._selector.__dict__.pop("select", None)
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _thread_label(self, ident: int, name: str) -> str:
        if ident == self._loop_thread:
            return "event loop (main thread)"
        if name.startswith("asyncio_"):
            return "asyncio.to_thread workers"
        return name

    @staticmethod
    def _threads_cpu() -> dict[int, tuple[str, float]]:
        out: dict[int, tuple[str, float]] = {}
        for thread in threading.enumerate():
            if thread.ident is None:
                continue
            try:
                clock = time.pthread_getcpuclockid(thread.ident)
                out[thread.ident] = (thread.name, time.clock_gettime(clock))
            except (OSError, AttributeError, OverflowError):
                continue
        return out

    def late_ticks(self, ticks: list[tuple[float, float]], over_s: float) -> dict[str, Any]:
        """Where the time went while each late tick waited: `ticks` are (deadline, woke) on
        the loop's clock; every iteration overlapping [deadline, woke] counts in full."""
        import bisect

        starts = [it.start for it in self.iterations]
        late = [(d, w) for d, w in ticks if w - d > over_s]
        parts = {
            "loop CPU in callbacks": 0.0,
            "in callbacks, not on a core / no GIL": 0.0,
            "selector overran its timeout (GIL or core on wake-up)": 0.0,
            "loop's own work between callbacks": 0.0,
            "gc (inside callbacks)": 0.0,
        }
        names: dict[str, float] = defaultdict(float)
        lag_total = 0.0
        for deadline, woke in late:
            lag_total += woke - deadline
            i = max(0, bisect.bisect_right(starts, deadline) - 1)
            while i < len(self.iterations) and self.iterations[i].start <= woke:
                it = self.iterations[i]
                i += 1
                if it.start + it.wall < deadline:
                    continue
                parts["loop CPU in callbacks"] += it.cpu
                parts["gc (inside callbacks)"] += it.gc_s
                parts["in callbacks, not on a core / no GIL"] += max(0.0, it.callback_wall - it.cpu)
                parts["selector overran its timeout (GIL or core on wake-up)"] += max(
                    0.0, it.select_wall - (it.select_timeout or 0.0)
                )
                parts["loop's own work between callbacks"] += max(
                    0.0, it.wall - it.select_wall - it.callback_wall
                )
                for name, cpu in it.by_name.items():
                    names[name] += cpu
        return {
            "late": len(late),
            "ticks": len(ticks),
            "lag_s": lag_total,
            "parts": parts,
            "names": sorted(names.items(), key=lambda kv: -kv[1]),
        }

    # -- reporting ----------------------------------------------------------------------

    def summary(self, threshold_s: float = 0.010) -> dict[str, Any]:
        from _common import percentile

        busy = [it for it in self.iterations if it.callbacks]
        cpus = [it.cpu * 1000 for it in busy]
        walls = [it.wall * 1000 for it in busy]
        heavy = [it for it in busy if it.cpu > threshold_s]
        heavy_names: dict[str, float] = defaultdict(float)
        for it in heavy:
            for name, cpu in it.by_name.items():
                heavy_names[name] += cpu
        # Time the loop thread was runnable but not running, inside iterations that ran
        # callbacks: wall minus (callback CPU), less the selector's own wait, which is
        # not separated here; so it is reported only for iterations with a wall > 10 ms.
        stalled = [it for it in busy if it.wall > threshold_s]
        gc_by_gen: dict[int, list[float]] = defaultdict(list)
        for gen, spent in self.gc_pauses:
            gc_by_gen[gen].append(spent * 1000)
        return {
            "iterations": len(busy),
            "iter_cpu_p50": percentile(cpus, 50),
            "iter_cpu_p99": percentile(cpus, 99),
            "iter_cpu_max": max(cpus) if cpus else float("nan"),
            "iter_wall_p99": percentile(walls, 99),
            "heavy": len(heavy),
            "heavy_cpu_s": sum(it.cpu for it in heavy),
            "heavy_gc_s": sum(it.gc_s for it in heavy),
            "heavy_names": sorted(heavy_names.items(), key=lambda kv: -kv[1]),
            "stalled": len(stalled),
            "stalled_wall_s": sum(it.wall for it in stalled),
            "stalled_cpu_s": sum(it.cpu for it in stalled),
            "waiting_s": sum(it.callback_wall - it.cpu for it in busy),
            "waiting_heavy_s": sum(
                it.callback_wall - it.cpu for it in busy if it.callback_wall > threshold_s
            ),
            "slow_callbacks": sum(1 for it in busy if it.callback_wall > threshold_s),
            "loop_cpu_s": sum(it.cpu for it in busy),
            "totals": sorted(self.totals.items(), key=lambda kv: -kv[1]),
            "gc": {gen: (len(v), sum(v), max(v)) for gen, v in sorted(gc_by_gen.items())},
            "threads": sorted(self.thread_cpu.items(), key=lambda kv: -kv[1]),
        }

    def report(
        self,
        ticks: list[tuple[float, float]] | None = None,
        top: int = 12,
        threshold_s: float = 0.010,
        late_s: float = 0.020,
    ) -> str:
        s = self.summary(threshold_s)
        lines: list[str] = []
        if ticks:
            t = self.late_ticks(ticks, late_s)
            lines += [
                f"Ticks later than {late_s * 1000:.0f} ms: {t['late']} of {t['ticks']}, "
                f"{t['lag_s'] * 1000:.0f} ms of lag in all. Over the loop iterations that "
                "overlapped those waits (each counted in full, so the parts can exceed the lag):",
                "",
                "| where the time went | ms |",
                "|---|---|",
            ]
            lines += [f"| {k} | {v * 1000:.0f} |" for k, v in t["parts"].items()]
            lines += ["", "| callbacks run during those waits | CPU (ms) |", "|---|---|"]
            lines += [f"| `{n}` | {c * 1000:.1f} |" for n, c in t["names"][:top]]
            lines.append("")
        lines += [
            f"Loop iterations that ran callbacks: {s['iterations']}; loop-thread CPU per "
            f"iteration p50 {s['iter_cpu_p50']:.2f} ms, **p99 {s['iter_cpu_p99']:.2f} ms**, "
            f"max {s['iter_cpu_max']:.1f} ms (wall p99 {s['iter_wall_p99']:.2f} ms). "
            f"Callback CPU on the loop thread in all: {s['loop_cpu_s']:.2f} s.",
            "",
            f"Iterations whose loop-thread CPU exceeded {threshold_s * 1000:.0f} ms: "
            f"{s['heavy']}, {s['heavy_cpu_s']:.2f} s of CPU, of which garbage collection "
            f"{s['heavy_gc_s']:.2f} s. Iterations with a wall time over "
            f"{threshold_s * 1000:.0f} ms: {s['stalled']}, {s['stalled_wall_s']:.2f} s wall for "
            f"{s['stalled_cpu_s']:.2f} s of loop CPU (the rest: the selector's wait, the GIL "
            "held by another thread, or the OS running something else).",
            "",
            f"Inside callbacks, wall minus loop-thread CPU (the loop thread runnable but not "
            f"running: waiting for the GIL or for a core): {s['waiting_s']:.2f} s in all, "
            f"{s['waiting_heavy_s']:.2f} s of it in the {s['slow_callbacks']} iterations whose "
            f"callbacks took over {threshold_s * 1000:.0f} ms of wall time.",
            "",
        ]
        if s["heavy_names"]:
            lines += [
                f"Top callers in iterations over {threshold_s * 1000:.0f} ms of CPU:",
                "",
                "| callback (task: imagerouter frame < library frame it resumed in) | CPU (ms) |",
                "|---|---|",
            ]
            lines += [f"| `{name}` | {cpu * 1000:.1f} |" for name, cpu in s["heavy_names"][:top]]
            lines.append("")
        lines += [
            "Top callbacks over the whole run (loop-thread CPU):",
            "",
            "| callback | calls | CPU (ms) | per call (us) |",
            "|---|---|---|---|",
        ]
        for name, cpu in s["totals"][:top]:
            calls = self.counts[name]
            lines.append(f"| `{name}` | {calls} | {cpu * 1000:.0f} | {cpu / calls * 1e6:.0f} |")
        lines += ["", "Garbage collections on the loop thread:", ""]
        lines += ["| generation | collections | total (ms) | longest (ms) |", "|---|---|---|---|"]
        for gen, (count, total, longest) in s["gc"].items():
            lines.append(f"| {gen} | {count} | {total:.1f} | {longest:.1f} |")
        lines += ["", "CPU per thread of this process while the jobs ran:", ""]
        lines += ["| thread | CPU (s) |", "|---|---|"]
        lines += [f"| {name} | {cpu:.2f} |" for name, cpu in s["threads"]]
        return "\n".join(lines)

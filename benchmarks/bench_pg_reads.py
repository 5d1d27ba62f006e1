"""Reads of the PostgreSQL ledger while writes run: do they queue behind the writer?

A fresh schema in the database at $IMAGEROUTER_TEST_POSTGRES (default: the test server),
seeded with 200 requests. Then, while `--writers` coroutines keep writing (begin_request,
one after another, through `ledger.aio`: the one writer thread and its batches), 200 reads
run, four ways, each read timed alone:

- async, one at a time: `await ledger.aio.committed_usd(None)` (a budget status, the
  sweeper's look-ups), 200 in turn: how long one read waits while the writer is busy;
- async, 200 at once: the same 200 reads gathered;
- sync, one at a time: `ledger.reading()` + one SELECT, 200 in turn from one thread (the
  gateway's job and file look-ups, the CLI's reports);
- sync, 200 threads: the same from 200 threads at once.

Prints p50 / p99 / max latency per kind and the writes committed meanwhile. Run by hand:
`python benchmarks/bench_pg_reads.py` (`--no-pool`: every read on the writer connection, as
before the read pool, for the A/B); the schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from _common import machine, percentile

from imagerouter.ledger import Ledger
from imagerouter.stores import open_ledger

BASE = os.environ.get("IMAGEROUTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
READS = 200


def _request(n: int) -> dict[str, object]:
    return {"operation": "generate", "model": "gpt-image-1", "tier": None, "prompt": f"p{n}",
            "request": {"n": 1}, "output_dir": "/tmp/out", "quoted_usd": Decimal("0.04")}


async def _writes(ledger: Ledger, writers: int, stop: asyncio.Event) -> int:
    done = 0

    async def one(w: int) -> None:
        nonlocal done
        n = 0
        while not stop.is_set():
            await ledger.aio.begin_request(f"w{w}-{n}", **_request(n))  # type: ignore[arg-type]
            n += 1
            done += 1

    await asyncio.gather(*(one(w) for w in range(writers)))
    return done


async def _one_read(ledger: Ledger) -> float:
    start = time.perf_counter()
    await ledger.aio.committed_usd(None)
    return time.perf_counter() - start


async def _async_reads(ledger: Ledger) -> list[float]:
    return list(await asyncio.gather(*(_one_read(ledger) for _ in range(READS))))


async def _reads_in_turn(ledger: Ledger) -> list[float]:
    return [await _one_read(ledger) for _ in range(READS)]


def _sync_read(ledger: Ledger, n: int) -> float:
    start = time.perf_counter()
    with ledger.reading() as conn:
        conn.execute("SELECT status FROM requests WHERE id = ?", (f"seed{n}",)).fetchone()
    return time.perf_counter() - start


def _sync_reads_in_turn(ledger: Ledger) -> list[float]:
    return [_sync_read(ledger, n) for n in range(READS)]


def _sync_reads(ledger: Ledger) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()
    go = threading.Barrier(READS)

    def one(n: int) -> None:
        go.wait()
        took = _sync_read(ledger, n)
        with lock:
            times.append(took)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(READS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


async def _run(ledger: Ledger, writers: int) -> None:
    for n in range(READS):
        await ledger.aio.begin_request(f"seed{n}", **_request(n))  # type: ignore[arg-type]
    stop = asyncio.Event()
    writing = asyncio.create_task(_writes(ledger, writers, stop))
    await asyncio.sleep(0.5)  # the writer is busy before the reads start
    await ledger.aio.committed_usd(None)  # the read pool (if any) is open
    batches = ledger.aio.batches
    start = time.perf_counter()
    turn_times = await _reads_in_turn(ledger)
    async_times = await _async_reads(ledger)
    sync_turn_times = await asyncio.to_thread(_sync_reads_in_turn, ledger)
    sync_times = await asyncio.to_thread(_sync_reads, ledger)
    elapsed = time.perf_counter() - start
    batches = ledger.aio.batches - batches
    stop.set()
    writes = await writing
    print(machine())
    print(f"{writers} writers, {READS} concurrent reads of each kind, "
          f"{batches} write batches committed during the reads ({elapsed:.2f} s), "
          f"{writes} writes in all")
    for kind, times in (("async, one at a time", turn_times),
                        ("async, 200 at once", async_times),
                        ("sync, one at a time", sync_turn_times),
                        ("sync, 200 threads", sync_times)):
        ms = [t * 1000 for t in times]
        print(f"  {kind:22} p50 {percentile(ms, 50):7.2f} ms  p99 {percentile(ms, 99):7.2f} ms"
              f"  max {max(ms):7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--no-pool", action="store_true",
                        help="every read on the writer connection, as before the read pool")
    args = parser.parse_args()
    if args.no_pool:
        from imagerouter.stores.postgres import PgLedger

        PgLedger.reads_pooled = lambda self: False  # type: ignore[method-assign]
    schema = f"ir_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(BASE, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in BASE else "?"
    try:
        with open_ledger(f"{BASE}{sep}options=-csearch_path%3D{schema}") as ledger:
            asyncio.run(_run(ledger, args.writers))
    finally:
        with psycopg.connect(BASE, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()

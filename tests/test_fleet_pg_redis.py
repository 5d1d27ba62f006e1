"""The fleet: three gateway processes on PostgreSQL (ledger) + Redis (shared state), in front
of the emulators, and the sweeper lease. Real servers on 127.0.0.1 (see tests/conftest.py)."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from imagerouter import Router
from imagerouter.clock import FakeClock
from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.emulation import FaultPlan, LatencyModel
from imagerouter.plugins import Plugins
from imagerouter.stores.shared_lease import RedisLease, SqliteLease

from .conftest import base_config
from .test_fleet_serve import _start, _wait_for_port
from .test_stores_ledger import pg_url  # noqa: F401 - the fixture: a fresh schema

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"irtest:{uuid.uuid4().hex}:"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


async def test_one_redis_lease_holder_at_a_time(prefix: str) -> None:
    first = RedisLease(REDIS_URL, f"{prefix}lease", ttl_s=30)
    second = RedisLease(REDIS_URL, f"{prefix}lease", ttl_s=30)
    assert await first() and await first()  # the holder renews
    assert not await second()
    await first.release()
    assert await second()
    assert not await first()


async def test_a_lapsed_sqlite_lease_is_taken_over(tmp_path: Path) -> None:
    clock = FakeClock(start=100.0)
    first = SqliteLease(tmp_path / "shared.db", "sweeper", ttl_s=10, clock=clock)
    second = SqliteLease(tmp_path / "shared.db", "sweeper", ttl_s=10, clock=clock)
    assert await first()
    assert not await second()
    clock.advance(10.0)  # the holder died: it stopped renewing
    assert await second()
    assert not await first()


def test_three_replicas_share_jobs_budget_and_health(
    emulators: Emulators,
    tmp_path: Path,
    prefix: str,
    pg_url: str,  # noqa: F811
) -> None:
    data: dict[str, Any] = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        data["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    data["ledger"] = {"url": pg_url}
    data["shared"] = {"url": REDIS_URL, "prefix": prefix}
    data["budget"] = {"total_usd": "0.30"}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    logs = [tmp_path / f"r{i}.log" for i in range(3)]
    replicas = [_start(config, log) for log in logs]
    try:
        ports = [_wait_for_port(log, p) for log, p in zip(logs, replicas, strict=True)]
        bases = [f"http://127.0.0.1:{port}" for port in ports]

        # A job created on one replica is read, and its image fetched, from another.
        with httpx.Client(base_url=bases[0], timeout=30) as a:
            accepted = a.post("/v1/images/jobs", json={"prompt": "a fox"})
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["id"]
        with httpx.Client(base_url=bases[1], timeout=30) as b:
            for _ in range(600):
                body = b.get(f"/v1/images/jobs/{job_id}").json()
                if body["status"] == "succeeded":
                    break
                httpx.get(f"{bases[1]}/healthz")  # a real round trip, not a sleep
            assert body["status"] == "succeeded", body
            [file_id] = body["file_ids"]
            assert b.get(f"/v1/files/{file_id}/content").content[:4] == b"\x89PNG"
        spent = float(body["cost_usd"])

        # A budget shared across replicas: what is left serves exactly that many requests.
        room = round((0.30 - spent) / spent)

        def call(i: int) -> int:
            with httpx.Client(base_url=bases[i % 3], timeout=60) as http:
                return http.post("/v1/images/generations", json={"prompt": f"cat {i}"}).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(call, range(3 * room + 3)))
        assert codes.count(200) == room, (codes, [log.read_text() for log in logs])
        assert set(codes) <= {200, 429}
        assert sum(emulators.created().values()) == room + 1  # paid creates = served images
    finally:
        for process in replicas:
            process.terminate()
        for process in replicas:
            try:
                process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()


def test_a_backend_ejected_on_one_replica_is_avoided_by_the_others(
    emulators: Emulators,
    tmp_path: Path,
    prefix: str,
    pg_url: str,  # noqa: F811
) -> None:
    data: dict[str, Any] = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        data["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    data.update(
        ledger={"url": pg_url},
        shared={"url": REDIS_URL, "prefix": prefix},
        health={"failure_threshold": 1, "base_ejection_s": 600, "max_ejection_s": 600},
        routing={"strategy": "priority"},
        tiers={
            "t": [
                {"provider": "runapi", "model": "gpt-image-2"},
                {"provider": "runflow", "model": "gpt-image-2"},
            ]
        },
        default_tier="t",
    )
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    emulators.apps["runapi"].options.faults = FaultPlan.parse("create:503@1")
    logs = [tmp_path / f"r{i}.log" for i in range(3)]
    replicas = [_start(config, log) for log in logs]
    try:
        ports = [_wait_for_port(log, p) for log, p in zip(logs, replicas, strict=True)]
        for port in ports:  # replica 0 meets the outage; 1 and 2 must not try runapi at all
            response = httpx.post(
                f"http://127.0.0.1:{port}/v1/images/generations",
                json={"prompt": "a fox"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-imagerouter-provider"] == "runflow"
        assert emulators.apps["runapi"].counters.snapshot()["faults"] == {"create:503": 1}
        assert emulators.created() == {"runapi": 0, "runflow": 3}
    finally:
        for process in replicas:
            process.terminate()
        for process in replicas:
            try:
                process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()


def test_an_idempotent_retry_on_another_replica_gets_the_first_answer(
    emulators: Emulators,
    tmp_path: Path,
    prefix: str,
    pg_url: str,  # noqa: F811
) -> None:
    data: dict[str, Any] = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        data["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    data.update(ledger={"url": pg_url}, shared={"url": REDIS_URL, "prefix": prefix})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    logs = [tmp_path / f"r{i}.log" for i in range(2)]
    replicas = [_start(config, log) for log in logs]
    try:
        ports = [_wait_for_port(log, p) for log, p in zip(logs, replicas, strict=True)]
        answers = [
            httpx.post(
                f"http://127.0.0.1:{port}/v1/images/generations",
                json={"prompt": "a fox", "response_format": "b64_json"},
                headers={"Idempotency-Key": "fleet-1"},
                timeout=60,
            )
            for port in ports
        ]
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        first, again = (a.json()["data"][0]["b64_json"] for a in answers)
        assert again == first
        assert sum(emulators.created().values()) == 1  # paid once, across replicas
    finally:
        for process in replicas:
            process.terminate()
        for process in replicas:
            try:
                process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()


# -- the scale: 60 concurrent requests, and a replica SIGKILLed with paid jobs ------


def _fleet_config(emulators: Emulators, tmp_path: Path, prefix: str, pg: str) -> dict[str, Any]:
    """Three replicas' config: one backend (so a reservation is exactly what a job costs)."""
    data: dict[str, Any] = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        data["providers"][name].update(
            base_url=emulators.url(name), api_key=emulators.keys[name], poll_deadline=30
        )
    data.update(
        ledger={"url": pg},
        shared={"url": REDIS_URL, "prefix": prefix},
        tiers={"t": [{"provider": "runflow", "model": "gpt-image-2"}]},
        default_tier="t",
    )
    return data


def _price(data: dict[str, Any], plugins: Plugins) -> Decimal:
    """What one request costs, from a quote (no paid call)."""
    router = Router(load_config(data, known_providers=plugins.providers()), plugins=plugins)
    try:
        offer = next(o for o in router.quote("a cat") if o.eligible)
    finally:
        router.close()
    assert offer.total_usd is not None and offer.total_usd > 0
    return offer.total_usd


def _advisory_lease_held(url: str, name: str) -> bool:
    """Some session holds the PgLease `name` of the ledger at `url` (pg_locks, not taking it)."""
    import psycopg

    from imagerouter.stores.pg_lease import lock_key

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
        key = lock_key(str(row[0] if row else ""), name) & 0xFFFF_FFFF_FFFF_FFFF
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 1",
            (key >> 32, key & 0xFFFF_FFFF),
        ).fetchone()
    return bool(held and held[0])


def _stop(replicas: list[subprocess.Popen[bytes]]) -> None:
    for process in replicas:
        if process.poll() is None:
            process.terminate()
    for process in replicas:
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()


def test_sixty_requests_over_three_replicas_a_budget_for_twenty_serves_twenty(
    emulators: Emulators,
    plugins: Plugins,
    tmp_path: Path,
    prefix: str,
    pg_url: str,  # noqa: F811
) -> None:
    data = _fleet_config(emulators, tmp_path, prefix, pg_url)
    price = _price(data, plugins)
    data["budget"] = {"total_usd": str(price * 20)}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    logs = [tmp_path / f"r{i}.log" for i in range(3)]
    replicas = [_start(config, log) for log in logs]
    try:
        bases = [
            f"http://127.0.0.1:{_wait_for_port(log, p)}"
            for log, p in zip(logs, replicas, strict=True)
        ]

        def call(i: int) -> tuple[int, str]:
            with httpx.Client(base_url=bases[i % 3], timeout=60) as http:
                answer = http.post("/v1/images/generations", json={"prompt": f"cat {i}"})
                return answer.status_code, answer.text

        with ThreadPoolExecutor(60) as pool:
            answers = list(pool.map(call, range(60)))
        codes = [code for code, _ in answers]
        assert codes.count(200) == 20, (answers, [log.read_text() for log in logs])
        assert codes.count(429) == 40, answers  # refused: the budget is spent
        counters = emulators.apps["runflow"].counters.snapshot()
        assert emulators.created() == {"runapi": 0, "runflow": 20}  # paid creates = served
        assert counters["billed_usd"] == price * 20  # and no job was billed twice
        assert counters["replayed"] == 0
    finally:
        _stop(replicas)


def test_a_replica_killed_with_paid_jobs_in_flight_has_them_collected_by_another(
    emulators: Emulators,
    plugins: Plugins,
    tmp_path: Path,
    prefix: str,
    pg_url: str,  # noqa: F811
) -> None:
    data = _fleet_config(emulators, tmp_path, prefix, pg_url)
    data["gateway"] = {"sweep_interval_s": 0.5}  # the lease lapses 1.5 s after its holder died
    price = _price(data, plugins)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    # Jobs run long enough to be in flight when the replica dies.
    emulators.apps["runflow"].options.latency = LatencyModel.parse("fixed:3")
    logs = [tmp_path / f"r{i}.log" for i in range(3)]
    replicas = [_start(config, logs[0])]
    jobs = 6
    try:
        base = f"http://127.0.0.1:{_wait_for_port(logs[0], replicas[0])}"
        # The replica that will die holds the sweeper's lease (with a PostgreSQL ledger, an
        # advisory lock: stores/pg_lease.py): the others must take it over.
        deadline = time.monotonic() + 30
        while not _advisory_lease_held(pg_url, f"{prefix}lease:sweeper"):
            assert time.monotonic() < deadline, logs[0].read_text()
            time.sleep(0.05)
        replicas += [_start(config, log) for log in logs[1:]]
        for log, process in zip(logs[1:], replicas[1:], strict=True):
            _wait_for_port(log, process)

        def call(i: int) -> int | str:
            try:
                with httpx.Client(base_url=base, timeout=60) as http:
                    return http.post(
                        "/v1/images/generations", json={"prompt": f"fox {i}"}
                    ).status_code
            except httpx.HTTPError as exc:  # the replica died under it
                return type(exc).__name__

        with ThreadPoolExecutor(jobs) as pool:
            pending = [pool.submit(call, i) for i in range(jobs)]
            deadline = time.monotonic() + 30
            while sum(emulators.created().values()) < jobs:  # every paid create is in flight
                assert time.monotonic() < deadline, emulators.created()
                time.sleep(0.01)
            replicas[0].send_signal(signal.SIGKILL)
            replicas[0].wait(timeout=30)  # reaped: its pid is gone, its jobs have no owner
            results = [future.result() for future in pending]
        out = Path(data["output"]["dir"])
        # The jobs run 3 s: the dead replica saved none, so what is on disk later another saved.
        assert not list(out.rglob("*.png"))
        assert 200 not in results, results  # none was served by the dead replica

        deadline = time.monotonic() + 60  # the issue: every paid image on disk within a minute
        while len(list(out.rglob("*.png"))) < jobs:
            assert time.monotonic() < deadline, (
                list(out.rglob("*")),
                [log.read_text() for log in logs],
            )
            time.sleep(0.05)
        counters = emulators.apps["runflow"].counters.snapshot()
        assert len(list(out.rglob("*.png"))) == jobs == emulators.created()["runflow"]
        assert counters["billed_usd"] == price * jobs  # 0 double charges

        # And the dead replica's jobs end: `succeeded` from another replica once their
        # requests are collected, with file ids any replica serves (gateway/orphaned_jobs.py).
        b, c = (
            httpx.Client(base_url=f"http://127.0.0.1:{_wait_for_port(log, process)}", timeout=30)
            for log, process in zip(logs[1:], replicas[1:], strict=True)
        )
        with b, c:
            deadline = time.monotonic() + 60
            while True:
                listed = b.get("/v1/images/jobs", params={"limit": 100}).json()["data"]
                if len(listed) == jobs and {item["status"] for item in listed} == {"succeeded"}:
                    break
                assert time.monotonic() < deadline, (listed, [log.read_text() for log in logs])
                time.sleep(0.05)
            served = set()
            for item in listed:
                body = c.get(f"/v1/images/jobs/{item['id']}").json()
                assert body["status"] == "succeeded" and Decimal(body["cost_usd"]) == price
                [file_id] = body["file_ids"]
                image = b.get(f"/v1/files/{file_id}/content")
                assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
                served.add(image.content)
            assert len(served) == jobs  # each job its own image
    finally:
        _stop(replicas)

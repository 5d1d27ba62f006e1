"""The fleet: three gateway processes on PostgreSQL (ledger) + Redis (shared state), in front
of the emulators, and the sweeper lease. Real servers on 127.0.0.1 (see tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from imagerouter.clock import FakeClock
from imagerouter.emulated import Emulators
from imagerouter.emulation import FaultPlan
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
    first.release()
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

"""The Redis parts of shared state besides health: rpm windows and callback nudges.

Against the real Redis on 127.0.0.1:6379, one key prefix per test, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis

from imagerouter.clock import FakeClock
from imagerouter.config import GatewayKey, SharedSettings
from imagerouter.gateway.errors import ApiError
from imagerouter.gateway.key_limits import KeyLimits, RateWindow
from imagerouter.stores.shared_redis import RedisNudges, RedisRateWindow, redis_client

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


def test_one_rpm_window_for_every_replica(prefix: str) -> None:
    clock = FakeClock(start=1_000.0)
    windows = [
        RedisRateWindow(redis_client(REDIS_URL), f"{prefix}rpm:team", 3, clock=clock)
        for _ in range(2)
    ]
    assert [windows[i % 2].admit() for i in range(3)] == [None, None, None]
    clock.advance(20.0)
    assert windows[1].admit() == pytest.approx(40.0)  # the first call leaves in 40 s
    assert windows[0].admit() == pytest.approx(40.0)  # refused calls are not counted
    clock.advance(40.0)
    assert windows[0].admit() is None


def test_key_limits_on_redis_refuse_across_replicas(prefix: str) -> None:
    key = GatewayKey(key="sk-test-secret-1", name="team", rpm=2)
    shared = SharedSettings(url=REDIS_URL, prefix=prefix)
    clock = FakeClock(start=50.0)
    replicas = [KeyLimits([key], clock=clock, shared=shared) for _ in range(2)]
    replicas[0].admit(key)
    replicas[1].admit(key)
    with pytest.raises(ApiError) as refused:
        replicas[0].admit(key)
    assert refused.value.status == 429
    assert "sk-test-secret-1" not in str(refused.value.body())


def test_redis_down_counts_locally() -> None:
    clock = FakeClock()
    local = RateWindow(1, clock=clock)
    window = RedisRateWindow(
        redis_client("redis://127.0.0.1:1/0"), "x", 1, clock=clock, fallback=local
    )
    assert window.admit() is None
    assert window.admit() is not None


async def test_a_nudge_published_on_one_replica_reaches_another(prefix: str) -> None:
    heard: list[tuple[str, str]] = []
    delivered = asyncio.Event()

    def deliver(provider: str, task_id: str) -> bool:
        heard.append((provider, task_id))
        delivered.set()
        return True

    replica_a = RedisNudges(REDIS_URL, deliver, prefix=prefix)
    replica_b = RedisNudges(REDIS_URL, lambda p, t: False, prefix=prefix)
    listening = asyncio.create_task(replica_a.run())
    try:
        await asyncio.wait_for(replica_a.ready.wait(), 10)
        assert await replica_b.publish("runapi", "task-42") == 1
        await asyncio.wait_for(delivered.wait(), 10)
    finally:
        listening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listening
        await replica_a.aclose()
        await replica_b.aclose()
    assert heard == [("runapi", "task-42")]

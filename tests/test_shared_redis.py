"""The Redis parts of shared state besides health: rpm windows, the lease, callback nudges.

Against the real Redis on 127.0.0.1:6379, one key prefix per test, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import openai
import pytest
import redis

from imagerouter.clock import FakeClock
from imagerouter.config import GatewayKey, SharedSettings
from imagerouter.emulated import Emulators
from imagerouter.gateway.errors import ApiError
from imagerouter.gateway.key_limits import KeyLimits, RateWindow
from imagerouter.stores.redis_conn import LoopRedis, Outage
from imagerouter.stores.shared_lease import RedisLease
from imagerouter.stores.shared_redis import RedisNudges, RedisRateWindow

from .tcp_proxy import TcpProxy
from .test_gateway import ServeGateway, serve_gateway

__all__ = ["serve_gateway"]  # the fixture

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


async def test_one_rpm_window_for_every_replica(prefix: str) -> None:
    clock = FakeClock(start=1_000.0)
    windows = [
        RedisRateWindow(LoopRedis(REDIS_URL), f"{prefix}rpm:team", 3, clock=clock)
        for _ in range(2)
    ]
    assert [await windows[i % 2].admit() for i in range(3)] == [None, None, None]
    clock.advance(20.0)
    assert await windows[1].admit() == pytest.approx(40.0)  # the first call leaves in 40 s
    assert await windows[0].admit() == pytest.approx(40.0)  # refused calls are not counted
    clock.advance(40.0)
    assert await windows[0].admit() is None


async def test_key_limits_on_redis_refuse_across_replicas(prefix: str) -> None:
    key = GatewayKey(key="sk-test-secret-1", name="team", rpm=2)
    shared = SharedSettings(url=REDIS_URL, prefix=prefix)
    clock = FakeClock(start=50.0)
    replicas = [KeyLimits([key], clock=clock, shared=shared) for _ in range(2)]
    await replicas[0].aadmit(key)
    await replicas[1].aadmit(key)
    with pytest.raises(ApiError) as refused:
        await replicas[0].aadmit(key)
    assert refused.value.status == 429
    assert "sk-test-secret-1" not in str(refused.value.body())
    assert "sk-test-secret-1" not in repr(replicas[0])


async def test_redis_down_counts_locally(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    local = RateWindow(1, clock=clock)
    window = RedisRateWindow(LoopRedis("redis://127.0.0.1:1/0"), "x", 1, clock=clock,
                             fallback=local)
    assert await window.admit() is None
    assert await window.admit() is not None
    assert await window.admit() is not None
    said = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(said) == 1  # once, not per request


async def test_rpm_goes_back_to_the_fleet_window_when_redis_is_back(prefix: str) -> None:
    proxy = TcpProxy(("127.0.0.1", 6379))
    outage = Outage("rpm", "counting locally", retry_s=0.0)  # retry Redis on every call
    clock = FakeClock(start=10.0)
    cut = RedisRateWindow(LoopRedis(proxy.url), f"{prefix}rpm:k", 2, clock=clock,
                          fallback=RateWindow(5, clock=clock), outage=outage)
    direct = RedisRateWindow(LoopRedis(REDIS_URL), f"{prefix}rpm:k", 2, clock=clock)
    assert await cut.admit() is None  # Redis unreachable: counted locally only
    assert outage.is_down
    proxy.start()
    try:
        assert await cut.admit() is None  # back: counted in the fleet's window
        assert not outage.is_down
        assert await direct.admit() is None
        assert await direct.admit() is not None  # the window is full for everyone
    finally:
        proxy.stop()


async def test_the_sweeper_lease_is_skipped_while_redis_is_down() -> None:
    lease = RedisLease("redis://127.0.0.1:1/0", "irtest:lease")
    assert await lease() is False
    await lease.release()  # nothing to give up; no error


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


def test_two_gateways_on_redis_share_one_rpm_window(
    serve_gateway: ServeGateway, emulators: Emulators, prefix: str
) -> None:
    """Two gateways (each its own event loop) on one Redis: a key's rpm holds for both."""
    config = {
        "gateway": {"api_keys": [{"key": "sk-team-secret-0001", "name": "team", "rpm": 2}]},
        "shared": {"url": REDIS_URL, "prefix": prefix},
    }
    first, second = serve_gateway(config, key=""), serve_gateway(config, key="")
    clients = [g.client(api_key="sk-team-secret-0001", max_retries=0) for g in (first, second)]
    assert clients[0].images.generate(prompt="one").data
    assert clients[1].images.generate(prompt="two").data
    with pytest.raises(openai.RateLimitError) as caught:
        clients[0].images.generate(prompt="three")
    assert caught.value.code == "rate_limit_exceeded"
    assert "sk-team-secret-0001" not in str(caught.value)
    assert sum(emulators.created().values()) == 2  # the refused call paid nothing

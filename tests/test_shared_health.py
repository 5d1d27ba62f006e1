"""Shared health (`shared.url`): a real SQLite file and the real Redis on 127.0.0.1:6379.

Each Redis test uses a prefix of its own and deletes its keys afterwards.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from click.testing import CliRunner

from imagerouter.cli import cli
from imagerouter.clock import FakeClock
from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.health import BackendState, FailureKind, HealthPolicy, HealthTracker
from imagerouter.health_store import BackendHealth, HealthStore
from imagerouter.plugins import Plugins
from imagerouter.stores.shared_open import open_health_store
from imagerouter.stores.shared_redis import RedisHealthStore
from imagerouter.stores.shared_sqlite import SqliteHealthStore

REDIS_URL = "redis://127.0.0.1:6379/0"
A = ("runapi", "gpt-image-2", "generate")
POLICY = HealthPolicy(failure_threshold=2, jitter=0.0)


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"irtest:{uuid.uuid4().hex}:"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _tracker(store: HealthStore, clock: FakeClock) -> HealthTracker:
    return HealthTracker(POLICY, store, clock=clock, rng=random.Random(1))


def _hammer(trackers: list[HealthTracker], rounds: int) -> None:
    """Every tracker, in its own thread, begins and succeeds `rounds` times at once."""

    def work(tracker: HealthTracker) -> None:
        for _ in range(rounds):
            assert tracker.begin(A)
            tracker.record_success(A, 0.1)

    threads = [threading.Thread(target=work, args=(t,)) for t in trackers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_breaker_opened_through_one_store_is_seen_through_another(
    kind: str, tmp_path: Path, prefix: str
) -> None:
    def store() -> HealthStore:
        if kind == "sqlite":
            return SqliteHealthStore(tmp_path / "shared.db")
        return RedisHealthStore(REDIS_URL, prefix=prefix)

    clock = FakeClock(start=1000.0)
    first, second = _tracker(store(), clock), _tracker(store(), clock)
    for _ in range(2):
        assert first.begin(A)
        first.record_failure(A, FailureKind.TRANSIENT, reason="HTTP 503")
    assert second.state(A) is BackendState.EJECTED
    assert not second.available(A)
    assert second.stats(A).reason == "HTTP 503"
    clock.advance(POLICY.base_ejection_s)
    assert second.begin(A)  # the half-open trial, granted once for both processes
    assert not first.begin(A)
    second.record_success(A)
    assert first.state(A) is BackendState.HEALTHY


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_concurrent_updates_through_separate_connections_lose_nothing(
    kind: str, tmp_path: Path, prefix: str
) -> None:
    clock = FakeClock(start=5.0)
    if kind == "sqlite":
        stores: list[HealthStore] = [SqliteHealthStore(tmp_path / "s.db") for _ in range(4)]
    else:
        stores = [RedisHealthStore(REDIS_URL, prefix=prefix) for _ in range(4)]
    trackers = [_tracker(store, clock) for store in stores]
    _hammer(trackers, 25)
    record = stores[0].get(A)
    assert record is not None
    assert record.successes == 100  # every compare-and-set landed once
    assert record.in_flight == 0


def test_retry_after_cooldown_is_shared(prefix: str) -> None:
    clock = FakeClock(start=50.0)
    first = _tracker(RedisHealthStore(REDIS_URL, prefix=prefix), clock)
    second = _tracker(RedisHealthStore(REDIS_URL, prefix=prefix), clock)
    assert first.begin(A)
    first.record_failure(A, FailureKind.RATE_LIMITED, retry_after=7.0)
    assert second.state(A) is BackendState.RATE_LIMITED
    assert second.retry_in(A) == pytest.approx(7.0)


def test_redis_down_keeps_serving_from_local_health() -> None:
    store = RedisHealthStore("redis://127.0.0.1:1/0")  # nothing listens on port 1
    tracker = _tracker(store, FakeClock())
    assert tracker.begin(A)
    tracker.record_failure(A, FailureKind.TRANSIENT)
    assert tracker.begin(A)
    tracker.record_failure(A, FailureKind.TRANSIENT)
    assert tracker.state(A) is BackendState.EJECTED
    assert [key for key, _ in store.items()] == [A]


def test_open_health_store_by_url(tmp_path: Path, prefix: str) -> None:
    assert type(open_health_store("memory")).__name__ == "MemoryHealthStore"
    sqlite_store = open_health_store(f"sqlite://{tmp_path / 'x.db'}")
    assert isinstance(sqlite_store, SqliteHealthStore)
    sqlite_store.put(A, BackendHealth(failures=2))
    assert open_health_store(f"sqlite://{tmp_path / 'x.db'}").items()[0][1].failures == 2
    assert isinstance(open_health_store(REDIS_URL, prefix=prefix), RedisHealthStore)
    with pytest.raises(ValueError):
        open_health_store("mongodb://x")


def test_bad_shared_url_is_one_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("shared:\n  url: mongodb://x\n")
    result = CliRunner().invoke(cli, ["config", "check", str(config)])
    assert result.exit_code == 2
    assert "shared.url" in result.output


def test_health_shows_a_breaker_opened_by_a_previous_generate(
    plugins: Plugins, tmp_path: Path
) -> None:
    faults = {"runapi": "create:503@1"}
    with Emulators.start(
        plugins, names=["runapi", "runflow"], latency="fixed:0.02", seed=3, faults=faults
    ) as emulators:
        providers = {
            name: {
                "base_url": emulators.url(name),
                "api_key": emulators.keys[name],
                "poll_interval": 0.01,
                "timeout": 5,
            }
            for name in ("runapi", "runflow")
        }
        config = tmp_path / "c.yaml"
        data = {
            "providers": providers,
            "shared": {"url": "sqlite"},
            "health": {"failure_threshold": 1},
            "routing": {"strategy": "priority"},
            "tiers": {
                "t": [
                    {"provider": "runapi", "model": "gpt-image-2"},
                    {"provider": "runflow", "model": "gpt-image-2"},
                ]
            },
            "default_tier": "t",
            "output": {"dir": str(tmp_path / "out")},
        }
        config.write_text(yaml.safe_dump(data))
        load_config(data, known_providers=plugins.providers())  # the test's config is valid
        runner = CliRunner()
        result = runner.invoke(cli, ["generate", "a cat", "--config", str(config)])
        assert result.exit_code == 0, result.output
        assert emulators.created()["runflow"] == 1  # failed over after runapi's 503
        result = runner.invoke(cli, ["health", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    backends = json.loads(result.output)["backends"]
    runapi = [b for b in backends if b["provider"] == "runapi" and b["state"] == "ejected"]
    assert runapi and runapi[0]["consecutive_failures"] == 1
    healthy = [b for b in backends if b["provider"] == "runflow" and b["successes"] == 1]
    assert healthy and healthy[0]["state"] == "healthy"

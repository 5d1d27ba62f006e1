"""Shared health (`shared.url`): a real SQLite file and the real Redis on 127.0.0.1:6379.

Each Redis test uses a prefix of its own and deletes its keys afterwards. The stores answer
from a local mirror and exchange records in the background, so a test that expects another
store's verdict waits for it (`wait_for`, with a generous bound) instead of reading at once.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
from imagerouter.stores.shared_mirror import MAX_QUEUED, HealthMirror
from imagerouter.stores.shared_open import open_health_store
from imagerouter.stores.shared_redis import RedisHealthStore
from imagerouter.stores.shared_sqlite import SqliteHealthStore

from .tcp_proxy import TcpProxy

REDIS_URL = "redis://127.0.0.1:6379/0"
A = ("runapi", "gpt-image-2", "generate")
B = ("runflow", "gpt-image-2", "generate")
SharedStore = SqliteHealthStore | RedisHealthStore
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


WAIT_S = 30.0  # generous: waits end as soon as the record arrives, this only bounds a failure


def _store(kind: str, tmp_path: Path, prefix: str, **options: Any) -> SharedStore:
    if kind == "sqlite":
        return SqliteHealthStore(tmp_path / "shared.db", **options)
    return RedisHealthStore(REDIS_URL, prefix=prefix, **options)


@pytest.fixture
def opened() -> Iterator[list[SharedStore]]:
    """Stores a test opens, closed after it (their threads stop, their queues are pushed)."""
    stores: list[SharedStore] = []
    yield stores
    for store in stores:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_breaker_opened_through_one_store_is_seen_through_another(
    kind: str, tmp_path: Path, prefix: str, opened: list[SharedStore]
) -> None:
    opened += [_store(kind, tmp_path, prefix), _store(kind, tmp_path, prefix)]
    first_store, second_store = opened
    clock = FakeClock(start=1000.0)
    first, second = _tracker(first_store, clock), _tracker(second_store, clock)
    for _ in range(2):
        assert first.begin(A)
        first.record_failure(A, FailureKind.TRANSIENT, reason="HTTP 503")
    assert first.state(A) is BackendState.EJECTED  # at once where it happened
    assert second_store.wait_for(A, lambda r: r.breaker_open, WAIT_S)
    assert second.state(A) is BackendState.EJECTED
    assert not second.available(A)
    assert second.stats(A).reason == "HTTP 503"
    clock.advance(POLICY.base_ejection_s)
    assert second.begin(A)  # the half-open trial
    assert first_store.wait_for(A, lambda r: r.trial_in_flight, WAIT_S)
    assert not first.begin(A)  # once the trial is heard, nobody else gets one
    second.record_success(A)
    assert first_store.wait_for(A, lambda r: not r.breaker_open, WAIT_S)
    assert first.state(A) is BackendState.HEALTHY


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_concurrent_updates_through_separate_connections_lose_nothing(
    kind: str, tmp_path: Path, prefix: str, opened: list[SharedStore]
) -> None:
    clock = FakeClock(start=5.0)
    opened += [_store(kind, tmp_path, prefix) for _ in range(4)]
    _hammer([_tracker(store, clock) for store in opened], 25)
    for store in opened:
        assert store.flush(WAIT_S)
    fresh = _store(kind, tmp_path, prefix)  # reads what the shared copy holds now
    opened.append(fresh)
    record = fresh.get(A)
    assert record is not None
    assert record.successes == 100  # every compare-and-set landed once
    assert record.in_flight == 0
    # ... and every replica's mirror ends with the same record.
    assert all(s.wait_for(A, lambda r: r.successes == 100, WAIT_S) for s in opened)


def test_retry_after_cooldown_is_shared(prefix: str, opened: list[SharedStore]) -> None:
    clock = FakeClock(start=50.0)
    opened += [RedisHealthStore(REDIS_URL, prefix=prefix) for _ in range(2)]
    first, second = (_tracker(store, clock) for store in opened)
    assert first.begin(A)
    first.record_failure(A, FailureKind.RATE_LIMITED, retry_after=7.0)
    assert opened[1].wait_for(A, lambda r: r.cooldown_until is not None, WAIT_S)
    assert second.state(A) is BackendState.RATE_LIMITED
    assert second.retry_in(A) == pytest.approx(7.0)


def test_an_ejection_reaches_another_replica_by_its_change_notice(
    prefix: str, opened: list[SharedStore]
) -> None:
    # No periodic full read within the test: only the published change can bring it.
    opened += [RedisHealthStore(REDIS_URL, prefix=prefix, refresh_s=3600) for _ in range(2)]
    clock = FakeClock(start=10.0)
    first, second = (_tracker(store, clock) for store in opened)
    assert second.available(A)
    assert first.begin(A)
    first.record_failure(A, FailureKind.TRANSIENT)
    assert first.begin(A)
    first.record_failure(A, FailureKind.TRANSIENT)
    assert opened[1].wait_for(A, lambda r: r.breaker_open, WAIT_S)
    assert second.state(A) is BackendState.EJECTED
    assert second.order([A, B]) == [B]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_routing_never_waits_for_the_shared_store(
    kind: str, tmp_path: Path, prefix: str, opened: list[SharedStore]
) -> None:
    """With the store's own thread stuck, reads and writes on the caller still answer at once
    (nothing on the routing path does I/O); the writes reach the others once it goes on."""
    opened += [_store(kind, tmp_path, prefix), _store(kind, tmp_path, prefix)]
    stuck, other = opened
    clock = FakeClock(start=1.0)
    tracker = _tracker(stuck, clock)
    with _stalled(stuck):
        for _ in range(2):
            assert tracker.begin(A)
            tracker.record_failure(A, FailureKind.TRANSIENT)
        assert tracker.order([A, B]) == [B]
        assert tracker.snapshot()[0].state is BackendState.EJECTED
        assert other.get(A) is None  # nothing was pushed while it was stuck
    assert other.wait_for(A, lambda r: r.breaker_open, WAIT_S)


@contextmanager
def _stalled(store: SharedStore) -> Iterator[None]:
    """Block the store's background work until the block ends."""
    release, blocked = threading.Event(), threading.Event()

    def block() -> None:
        blocked.set()
        release.wait(WAIT_S)

    if isinstance(store, RedisHealthStore):
        loop = store._loop
        assert loop is not None
        loop.call_soon_threadsafe(block)
        assert blocked.wait(WAIT_S)
        try:
            yield
        finally:
            release.set()
        return
    # SQLite: another connection holds the file's write lock, so a push cannot commit.
    conn = sqlite3.connect(store.path, timeout=WAIT_S, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


def test_redis_down_keeps_serving_from_local_health(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisHealthStore("redis://127.0.0.1:1/0", reconnect_s=0.01)  # nothing on port 1
    try:
        tracker = _tracker(store, FakeClock())
        assert tracker.begin(A)
        tracker.record_failure(A, FailureKind.TRANSIENT)
        assert tracker.begin(A)
        tracker.record_failure(A, FailureKind.TRANSIENT)
        assert tracker.state(A) is BackendState.EJECTED
        assert [key for key, _ in store.items()] == [A]
    finally:
        store.close()
    said = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(said) == 1  # once per outage, however many pushes and reconnects failed


def test_redis_back_after_an_outage_gets_the_verdicts_made_meanwhile(
    prefix: str, opened: list[SharedStore], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = TcpProxy(("127.0.0.1", 6379))
    proxy.start()
    try:
        cut = RedisHealthStore(proxy.url, prefix=prefix, reconnect_s=0.02)
        opened += [cut, RedisHealthStore(REDIS_URL, prefix=prefix)]
        proxy.stop()  # Redis "goes down" for this replica only
        tracker = _tracker(cut, FakeClock(start=3.0))
        for _ in range(2):
            assert tracker.begin(A)
            tracker.record_failure(A, FailureKind.TRANSIENT)
        assert tracker.state(A) is BackendState.EJECTED  # served from its own records
        assert not cut.flush(0.2)  # queued, not pushed
        proxy.start()
        assert opened[1].wait_for(A, lambda r: r.breaker_open and r.failures == 2, WAIT_S)
        assert cut.flush(WAIT_S)
        messages = [r.getMessage() for r in caplog.records]  # before the proxy stops again
    finally:
        proxy.stop()
    assert sum("Redis unreachable" in m for m in messages) == 1
    assert sum("Redis reachable again" in m for m in messages) == 1


def _count_success(record: BackendHealth) -> None:
    record.successes += 1


def test_the_mirror_applies_each_change_once_whatever_it_hears_meanwhile() -> None:
    woken: list[int] = []
    mirror = HealthMirror(lambda: woken.append(1))
    mirror.update(A, _count_success)
    assert mirror.get(A) is not None and mirror.get(A).successes == 1  # at once, locally
    assert woken  # the store's thread was told
    push = mirror.begin_push(A)
    assert push is not None and push.version == 0
    # Another replica's record (3 successes, version 1) arrives while our push is out:
    mirror.heard(A, 1, BackendHealth(successes=3))
    conflict = mirror.conflicted(push, 1, BackendHealth(successes=3))  # our CAS lost
    assert mirror.get(A).successes == 4  # theirs plus our queued change, once
    written = conflict.apply()
    assert written.successes == 4
    mirror.heard(A, 2, written)  # our own notice, before the CAS answer: held
    mirror.pushed(conflict, 2, written)
    assert mirror.get(A).successes == 4  # not 5: the notice did not apply it again
    assert mirror.queued() == 0
    mirror.heard(A, 1, BackendHealth(successes=1))  # an old record is ignored
    assert mirror.get(A).successes == 4


def test_the_mirror_drops_a_backlog_past_its_bound_only_in_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mirror = HealthMirror(lambda: None)
    for _ in range(MAX_QUEUED + 5):  # the store answers, only slowly: nothing is lost
        mirror.update(B, _count_success)
    assert mirror.queued() == MAX_QUEUED + 5
    mirror.reachable = False  # what the store says when it fails
    for _ in range(MAX_QUEUED + 5):
        mirror.update(A, _count_success)
    assert mirror.queued() == MAX_QUEUED + 5 + 5  # A's backlog was dropped: 5 queued since
    assert mirror.get(A).successes == MAX_QUEUED + 5  # this process still knows them
    assert sum("dropping" in r.getMessage() for r in caplog.records) == 1


def test_open_health_store_by_url(tmp_path: Path, prefix: str) -> None:
    assert type(open_health_store("memory")).__name__ == "MemoryHealthStore"
    sqlite_store = open_health_store(f"sqlite://{tmp_path / 'x.db'}")
    assert isinstance(sqlite_store, SqliteHealthStore)
    sqlite_store.put(A, BackendHealth(failures=2))
    sqlite_store.close()  # pushes the record to the file
    again = open_health_store(f"sqlite://{tmp_path / 'x.db'}")
    assert again.items()[0][1].failures == 2  # read when it opens: no wait needed
    again.close()
    redis_store = open_health_store(REDIS_URL, prefix=prefix)
    assert isinstance(redis_store, RedisHealthStore)
    redis_store.close()
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

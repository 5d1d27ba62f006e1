"""Tests for passive backend health (imagerouter.health) and the injectable clock.

Every test drives time with FakeClock; nothing really sleeps.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from imagerouter.clock import SYSTEM_CLOCK, FakeClock, system_sleep
from imagerouter.errors import ConfigError
from imagerouter.health import (
    BackendHealth,
    BackendKey,
    BackendState,
    FailureKind,
    HealthPolicy,
    HealthTracker,
    MemoryHealthStore,
)
from imagerouter.health_store import MAX_LATENCIES

A: BackendKey = ("runapi", "gpt-image-2", "generate")
B: BackendKey = ("runflow", "gpt-image-2", "generate")
C: BackendKey = ("runapi", "gpt-image-1.5", "generate")

NO_JITTER = HealthPolicy(jitter=0.0)


def make(
    policy: HealthPolicy = NO_JITTER,
    *,
    store: MemoryHealthStore | None = None,
    fingerprint: str = "cfg-1",
) -> tuple[HealthTracker, FakeClock]:
    clock = FakeClock()
    tracker = HealthTracker(
        policy, store, clock=clock, rng=random.Random(7), config_fingerprint=fingerprint
    )
    return tracker, clock


def fail(tracker: HealthTracker, key: BackendKey, times: int = 1) -> None:
    for _ in range(times):
        assert tracker.begin(key)
        tracker.record_failure(key, FailureKind.TRANSIENT)


def eject(tracker: HealthTracker, key: BackendKey) -> None:
    fail(tracker, key, tracker.policy.failure_threshold)
    assert tracker.state(key) is BackendState.EJECTED


def record_of(tracker: HealthTracker, key: BackendKey) -> BackendHealth:
    record = tracker.store.get(key)
    assert record is not None
    return record


# -- clock -----------------------------------------------------------------------------------


async def test_fake_clock_sleep_advances_instantly_and_records() -> None:
    clock = FakeClock(start=50.0)
    assert clock() == clock.now() == 50.0
    await clock.sleep(2.5)
    await clock.sleep(-1)  # recorded as asked, but time never goes back
    clock.advance(0.5)
    assert clock() == 53.0
    assert clock.sleeps == [2.5, -1]
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-0.1)


async def test_fake_sleep_lets_other_tasks_run() -> None:
    clock = FakeClock()
    seen: list[str] = []

    async def other() -> None:
        seen.append("other ran")

    task = asyncio.create_task(other())
    await clock.sleep(10)
    assert seen == ["other ran"]
    await task


async def test_system_clock_and_sleep() -> None:
    before = SYSTEM_CLOCK()
    await system_sleep(0)
    await system_sleep(-5)  # negative waits zero rather than raising
    assert SYSTEM_CLOCK() >= before


# -- breaker ---------------------------------------------------------------------------------


def test_failures_below_threshold_stay_healthy_and_success_resets_streak() -> None:
    tracker, _ = make()
    fail(tracker, A, 2)
    assert tracker.state(A) is BackendState.HEALTHY
    assert tracker.available(A)
    assert tracker.begin(A)
    tracker.record_success(A, 1.0)
    assert tracker.stats(A).consecutive_failures == 0
    fail(tracker, A, 2)
    assert tracker.state(A) is BackendState.HEALTHY
    fail(tracker, A)
    assert tracker.state(A) is BackendState.EJECTED


def test_threshold_ejects_for_base_time_then_half_open() -> None:
    tracker, clock = make()
    eject(tracker, A)
    assert not tracker.available(A)
    assert tracker.retry_in(A) == pytest.approx(30.0)
    clock.advance(29.9)
    assert tracker.state(A) is BackendState.EJECTED
    clock.advance(0.1)
    assert tracker.state(A) is BackendState.HALF_OPEN
    assert tracker.available(A)
    assert tracker.retry_in(A) is None


def test_ejection_jitter_uses_injected_rng() -> None:
    policy = HealthPolicy(jitter=0.1)
    tracker, _ = make(policy)
    eject(tracker, A)
    expected = 30.0 * (1 + random.Random(7).uniform(-0.1, 0.1))
    assert tracker.retry_in(A) == pytest.approx(expected)
    assert 27.0 <= expected <= 33.0
    assert expected != 30.0


def test_half_open_allows_exactly_one_trial_until_a_verdict() -> None:
    tracker, clock = make()
    eject(tracker, A)
    clock.advance(30)
    assert tracker.begin(A)
    assert record_of(tracker, A).trial_in_flight
    assert not tracker.begin(A)
    assert not tracker.available(A)
    assert tracker.order([A, B]) == [B]
    tracker.release(A)  # no verdict: the slot is free, still half-open
    assert tracker.state(A) is BackendState.HALF_OPEN
    assert tracker.begin(A)
    assert not tracker.begin(A)


def test_trial_success_closes_and_times_ejected_decays_per_success_streak() -> None:
    tracker, clock = make()
    eject(tracker, A)
    clock.advance(30)
    assert tracker.begin(A)
    tracker.record_success(A, 2.0)
    assert tracker.state(A) is BackendState.HEALTHY
    stats = tracker.stats(A)
    assert (stats.consecutive_failures, stats.times_ejected) == (0, 1)
    for _ in range(2):  # failure_threshold (3) successes in a row drop one ejection
        assert tracker.begin(A)
        tracker.record_success(A)
    assert tracker.stats(A).times_ejected == 0


def test_flapping_backend_is_ejected_longer_each_time() -> None:
    tracker, clock = make()
    eject(tracker, A)
    clock.advance(30)
    assert tracker.begin(A)
    tracker.record_success(A)  # one trial success, then it breaks again
    eject(tracker, A)
    assert tracker.retry_in(A) == pytest.approx(60.0)


def test_trial_failure_ejects_again_multiplicatively_up_to_the_cap() -> None:
    tracker, clock = make()
    eject(tracker, A)
    waits = []
    for _ in range(12):
        clock.advance(tracker.retry_in(A) or 0)
        assert tracker.state(A) is BackendState.HALF_OPEN
        assert tracker.begin(A)
        tracker.record_failure(A, FailureKind.TRANSIENT)
        assert tracker.state(A) is BackendState.EJECTED
        waits.append(tracker.retry_in(A))
    assert waits[:4] == pytest.approx([60.0, 90.0, 120.0, 150.0])
    assert waits[-1] == pytest.approx(300.0)
    assert max(w or 0 for w in waits) == pytest.approx(300.0)


def test_straggler_blocks_the_trial_and_its_failure_counts_only_when_half_open() -> None:
    tracker, clock = make()
    assert tracker.begin(A)  # a long job starts while healthy
    fail(tracker, A, 3)  # meanwhile three others fail: ejected for 30 s
    tracker.record_failure(A, FailureKind.TRANSIENT)  # the straggler fails while ejected
    assert tracker.retry_in(A) == pytest.approx(30.0)  # the ejection is not extended
    assert record_of(tracker, A).times_ejected == 1

    assert tracker.begin(A)  # another long job, started while healthy... (see below)
    clock.advance(30)
    assert tracker.state(A) is BackendState.HALF_OPEN
    # ...still in flight, so no trial may overlap it
    assert not tracker.available(A)
    assert not tracker.begin(A)
    tracker.record_failure(A, FailureKind.TRANSIENT)  # evidence while half-open: eject longer
    assert tracker.state(A) is BackendState.EJECTED
    assert tracker.retry_in(A) == pytest.approx(60.0)


def test_a_lost_trial_is_forgotten_after_trial_timeout() -> None:
    tracker, clock = make(HealthPolicy(jitter=0.0, trial_timeout_s=100.0))
    eject(tracker, A)
    clock.advance(30)
    assert tracker.begin(A)  # the caller crashes and never reports
    clock.advance(99)
    assert not tracker.begin(A)
    clock.advance(1)
    assert tracker.available(A)
    assert tracker.begin(A)


# -- other failure kinds ---------------------------------------------------------------------


def test_rate_limit_uses_retry_after_and_never_ejects() -> None:
    tracker, clock = make()
    fail(tracker, A, 2)
    for _ in range(10):
        clock.advance(tracker.retry_in(A) or 0)
        assert tracker.begin(A)
        tracker.record_failure(A, FailureKind.RATE_LIMITED, retry_after=5)
        assert tracker.state(A) is BackendState.RATE_LIMITED
        assert tracker.retry_in(A) == pytest.approx(5.0)
    stats = tracker.stats(A)
    assert (stats.consecutive_failures, stats.times_ejected, stats.failures) == (2, 0, 2)
    clock.advance(5)
    assert tracker.state(A) is BackendState.HEALTHY


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(None, 10.0), (1000.0, 300.0), (-3.0, None), (float("nan"), 10.0), (2.5, 2.5)],
)
def test_rate_limit_cooldown_default_and_cap(
    retry_after: float | None, expected: float | None
) -> None:
    tracker, _ = make()
    tracker.record_failure(A, FailureKind.RATE_LIMITED, retry_after=retry_after)
    assert tracker.retry_in(A) == pytest.approx(expected)
    # a negative Retry-After means no cooldown at all
    healthy = expected is None
    assert (tracker.state(A) is BackendState.HEALTHY) is healthy


def test_rate_limit_keeps_the_longer_cooldown() -> None:
    tracker, _ = make()
    tracker.record_failure(A, FailureKind.RATE_LIMITED, retry_after=60)
    tracker.record_failure(A, FailureKind.RATE_LIMITED, retry_after=1)
    assert tracker.retry_in(A) == pytest.approx(60.0)


def test_auth_failure_is_misconfigured_until_the_config_fingerprint_changes() -> None:
    store = MemoryHealthStore()
    tracker, clock = make(store=store, fingerprint="keys-v1")
    tracker.record_failure(A, FailureKind.AUTH, reason="runapi: invalid key (HTTP 401)")
    assert tracker.state(A) is BackendState.MISCONFIGURED
    assert tracker.retry_in(A) is None
    assert tracker.stats(A).reason == "runapi: invalid key (HTTP 401)"
    clock.advance(86_400)
    assert tracker.state(A) is BackendState.MISCONFIGURED
    assert not tracker.available(A)

    same = HealthTracker(NO_JITTER, store, clock=clock, config_fingerprint="keys-v1")
    assert same.state(A) is BackendState.MISCONFIGURED
    changed = HealthTracker(NO_JITTER, store, clock=clock, config_fingerprint="keys-v2")
    assert changed.state(A) is BackendState.HEALTHY
    assert changed.available(A)
    assert changed.begin(A)
    changed.record_success(A)
    assert tracker.state(A) is BackendState.HEALTHY  # the success cleared the mark


def test_credit_failure_is_out_of_credit_for_an_hour() -> None:
    tracker, clock = make()
    tracker.record_failure(A, FailureKind.CREDIT)
    assert tracker.state(A) is BackendState.OUT_OF_CREDIT
    assert tracker.retry_in(A) == pytest.approx(3600.0)
    assert tracker.stats(A).reason == "HTTP 402: out of credit"
    clock.advance(3599)
    assert not tracker.available(A)
    clock.advance(1)
    assert tracker.state(A) is BackendState.HEALTHY


def test_balance_checks_end_or_start_out_of_credit_for_the_provider_only() -> None:
    tracker, _ = make()
    tracker.record_failure(A, FailureKind.CREDIT)
    tracker.record_failure(C, FailureKind.CREDIT)
    tracker.record_success(B)
    tracker.record_balance("runapi", Decimal("12.50"))
    assert tracker.state(A) is BackendState.HEALTHY
    assert tracker.state(C) is BackendState.HEALTHY
    tracker.record_balance("runflow", Decimal("0"))
    assert tracker.state(B) is BackendState.OUT_OF_CREDIT
    assert tracker.state(A) is BackendState.HEALTHY
    assert tracker.stats(B).reason == "balance is 0 USD"


@pytest.mark.parametrize("phase", ["healthy", "ejected", "half_open_trial", "rate_limited"])
def test_request_errors_change_nothing(phase: str) -> None:
    tracker, clock = make()
    fail(tracker, A, 1)
    if phase == "healthy":
        assert tracker.begin(A)  # an attempt in flight: the request error must not end it
    if phase == "ejected":
        eject(tracker, A)
    if phase == "half_open_trial":
        eject(tracker, A)
        clock.advance(30)
        assert tracker.begin(A)
    if phase == "rate_limited":
        tracker.record_failure(A, FailureKind.RATE_LIMITED)
    before = record_of(tracker, A).to_dict()
    state = tracker.state(A)
    tracker.record_failure(A, FailureKind.REQUEST, retry_after=99, reason="content policy")
    assert record_of(tracker, A).to_dict() == before
    assert tracker.state(A) is state


def test_request_error_on_an_unknown_backend_creates_no_record() -> None:
    tracker, _ = make()
    tracker.record_failure(A, FailureKind.REQUEST)
    assert tracker.store.get(A) is None


def test_failure_kind_accepts_its_string_value() -> None:
    tracker, _ = make()
    tracker.record_failure(A, "credit")  # type: ignore[arg-type]
    assert tracker.state(A) is BackendState.OUT_OF_CREDIT


# -- order -----------------------------------------------------------------------------------


def test_order_keeps_the_given_order_without_unavailable_keys() -> None:
    tracker, _ = make()
    eject(tracker, B)
    assert tracker.order([C, B, A]) == [C, A]
    assert tracker.order([A, C]) == [A, C]
    assert tracker.order([]) == []
    assert tracker.order([A, A, C]) == [A, C]


def test_order_never_ejects_everything_least_recently_failed_wins() -> None:
    tracker, clock = make()
    eject(tracker, A)
    clock.advance(5)
    eject(tracker, B)
    assert tracker.order([B, A]) == [A]
    # the fallback key is tried as a trial: one attempt at a time
    assert tracker.begin(A)
    assert not tracker.begin(A)
    # with A busy, the idle B is the better fallback
    assert tracker.order([A, B]) == [B]
    tracker.record_success(A)
    assert tracker.state(A) is BackendState.HEALTHY
    assert tracker.order([B, A]) == [A]


def test_order_fallback_prefers_a_backend_that_never_failed() -> None:
    tracker, _ = make()
    eject(tracker, A)
    # B is out (a cooldown) but has no failure on record: it counts as the oldest
    tracker.store.put(B, BackendHealth(cooldown_until=10.0**9))
    assert tracker.order([A, B]) == [B]


def test_order_ignores_misconfigured_keys_while_others_exist() -> None:
    tracker, clock = make()
    tracker.record_failure(A, FailureKind.AUTH)  # oldest failure, but misconfigured
    clock.advance(10)
    eject(tracker, B)
    clock.advance(10)
    tracker.record_failure(C, FailureKind.CREDIT)
    assert tracker.order([A, B, C]) == [B]


def test_order_when_every_key_is_misconfigured_returns_the_oldest_failure() -> None:
    tracker, clock = make()
    tracker.record_failure(B, FailureKind.AUTH)
    clock.advance(1)
    tracker.record_failure(A, FailureKind.AUTH)
    assert tracker.order([A, B]) == [B]


# -- stats -----------------------------------------------------------------------------------


def test_stats_success_rate_latencies_and_json() -> None:
    tracker, _ = make()
    for latency in (10.0, 20.0, 30.0, 40.0):
        assert tracker.begin(A)
        tracker.record_success(A, latency)
    fail(tracker, A, 1)
    tracker.record_failure(A, FailureKind.RATE_LIMITED, retry_after=4)
    stats = tracker.stats(A)
    assert stats.success_rate == pytest.approx(0.8)  # 429s are not failures
    assert stats.p50_latency_s == pytest.approx(25.0)
    ewma = 10.0
    for latency in (20.0, 30.0, 40.0):
        ewma = 0.3 * latency + 0.7 * ewma
    assert stats.ewma_latency_s == pytest.approx(ewma)
    assert stats.state is BackendState.RATE_LIMITED
    assert stats.retry_in_s == pytest.approx(4.0)
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["provider"] == "runapi"
    assert data["operation"] == "generate"
    assert data["state"] == "rate_limited"
    assert data["successes"] == 4
    assert data["reason"] == "HTTP 429: rate limited; cooling down 4 s"


def test_stats_for_an_unknown_backend_and_ignored_latencies() -> None:
    tracker, _ = make()
    stats = tracker.stats(A)
    assert stats.state is BackendState.HEALTHY
    assert stats.available
    assert (stats.success_rate, stats.p50_latency_s, stats.reason) == (None, None, None)
    tracker.record_success(A, float("nan"))
    tracker.record_success(A, -1.0)
    assert tracker.stats(A).p50_latency_s is None


def test_half_open_reason_mentions_the_trial() -> None:
    tracker, clock = make()
    eject(tracker, A)
    assert tracker.stats(A).reason == "3 consecutive failures"
    clock.advance(30)
    assert tracker.stats(A).reason == (
        "half-open: the next attempt is a trial (after: 3 consecutive failures)"
    )


def test_snapshot_lists_given_keys_first_then_known_ones() -> None:
    tracker, _ = make()
    tracker.record_success(C)
    tracker.record_failure(A, FailureKind.CREDIT)
    snap = tracker.snapshot([B])
    assert [s.key for s in snap] == [B, C, A]  # C sorts first: "gpt-image-1.5"
    assert [s.state for s in snap] == [
        BackendState.HEALTHY,
        BackendState.HEALTHY,
        BackendState.OUT_OF_CREDIT,
    ]


# -- store and policy ------------------------------------------------------------------------


def test_record_round_trips_through_plain_data_and_bounds_latencies() -> None:
    record = BackendHealth(times_ejected=2, reasons={"transient": "x"})
    for i in range(MAX_LATENCIES + 20):
        record.add_latency(float(i))
    assert len(record.latencies) == MAX_LATENCIES
    assert record.latencies[0] == 20.0
    data = json.loads(json.dumps(record.to_dict()))
    data["added_by_a_newer_version"] = 1
    assert BackendHealth.from_dict(data) == record


def test_memory_store_copies_records_in_and_out() -> None:
    store = MemoryHealthStore()
    record = BackendHealth()
    store.put(A, record)
    record.latencies.append(1.0)
    fetched = store.get(A)
    assert fetched is not None
    assert fetched.latencies == []
    fetched.reasons["auth"] = "x"
    assert store.items() == [(A, BackendHealth())]


def test_tracker_is_thread_safe() -> None:
    tracker = HealthTracker(NO_JITTER, clock=FakeClock())

    def work() -> None:
        for _ in range(200):
            assert tracker.begin(A)
            tracker.record_success(A, 1.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = record_of(tracker, A)
    assert (record.successes, record.in_flight) == (1600, 0)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        HealthPolicy(failure_threshold=0)
    with pytest.raises(ValueError, match="jitter"):
        HealthPolicy(jitter=1.5)
    with pytest.raises(ValueError, match="max_ejection_s"):
        HealthPolicy(base_ejection_s=60, max_ejection_s=30)
    with pytest.raises(ValueError, match="out_of_credit_s"):
        HealthPolicy(out_of_credit_s=-1)


def test_policy_from_config_mapping() -> None:
    policy = HealthPolicy.from_mapping(
        {"failure_threshold": 5, "base_ejection_s": 10, "free_checks": False}
    )
    assert (policy.failure_threshold, policy.base_ejection_s, policy.jitter) == (5, 10.0, 0.1)
    with pytest.raises(ConfigError, match=r"health\.base_ejecton_s: unknown key"):
        HealthPolicy.from_mapping({"base_ejecton_s": 10})
    with pytest.raises(ConfigError, match=r"health\.jitter: must be a number"):
        HealthPolicy.from_mapping({"jitter": "lots"})
    with pytest.raises(ConfigError, match=r"health\.failure_threshold: must be a whole"):
        HealthPolicy.from_mapping({"failure_threshold": 2.5})
    with pytest.raises(ConfigError, match=r"health\.free_checks: must be true or false"):
        HealthPolicy.from_mapping({"free_checks": "yes"})
    with pytest.raises(ConfigError, match=r"health: jitter must be in"):
        HealthPolicy.from_mapping({"jitter": 2})


# -- stateful property test ------------------------------------------------------------------

OUTCOMES = ["success", "transient", "rate_limited", "auth", "credit", "release"]


class HealthMachine(RuleBasedStateMachine):
    """Random attempts, verdicts and clock moves over 2-4 backends."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = MemoryHealthStore()
        # A huge trial timeout: the model below assumes attempts are never presumed lost.
        self.policy = HealthPolicy(failure_threshold=2, trial_timeout_s=1e12)
        self.tracker = self._tracker("cfg-0")
        self.keys: list[BackendKey] = []
        self.outstanding: list[tuple[BackendKey, bool]] = []  # (key, begun as a trial)

    def _tracker(self, fingerprint: str) -> HealthTracker:
        return HealthTracker(
            self.policy,
            self.store,
            clock=self.clock,
            rng=random.Random(0),
            config_fingerprint=fingerprint,
        )

    @initialize(count=st.integers(min_value=2, max_value=4))
    def make_keys(self, count: int) -> None:
        self.keys = [(f"p{i}", "gpt-image-2", "generate") for i in range(count)]

    @rule(data=st.data())
    def begin(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.keys))
        was_healthy = self.tracker.state(key) is BackendState.HEALTHY
        if self.tracker.begin(key):
            self.outstanding.append((key, not was_healthy))
        else:
            assert not was_healthy

    @rule(data=st.data())
    def begin_what_order_offers(self, data: st.DataObject) -> None:
        keys = data.draw(st.permutations(self.keys))
        first = self.tracker.order(keys)[0]
        was_healthy = self.tracker.state(first) is BackendState.HEALTHY
        if self.tracker.begin(first):
            self.outstanding.append((first, not was_healthy))

    @precondition(lambda self: bool(self.outstanding))
    @rule(
        data=st.data(),
        outcome=st.sampled_from(OUTCOMES),
        retry_after=st.none() | st.floats(min_value=-5, max_value=1000),
        latency=st.none() | st.floats(min_value=0, max_value=300),
    )
    def finish(
        self, data: st.DataObject, outcome: str, retry_after: float | None, latency: float | None
    ) -> None:
        index = data.draw(st.integers(min_value=0, max_value=len(self.outstanding) - 1))
        key, _ = self.outstanding.pop(index)
        if outcome == "success":
            self.tracker.record_success(key, latency)
            assert self.tracker.state(key) in (BackendState.HEALTHY, BackendState.RATE_LIMITED)
        elif outcome == "release":
            self.tracker.release(key)
        else:
            self.tracker.record_failure(key, FailureKind(outcome), retry_after=retry_after)

    @rule(data=st.data())
    def request_error_changes_nothing(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.keys))
        before = self.store.get(key)
        state = self.tracker.state(key)
        self.tracker.record_failure(key, FailureKind.REQUEST, retry_after=1.0)
        after = self.store.get(key)
        assert (after.to_dict() if after else None) == (before.to_dict() if before else None)
        assert self.tracker.state(key) is state

    @rule(seconds=st.floats(min_value=0, max_value=4000))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(fingerprint=st.sampled_from(["cfg-0", "cfg-1"]))
    def reload_config(self, fingerprint: str) -> None:
        self.tracker = self._tracker(fingerprint)

    @invariant()
    def order_is_never_empty_and_never_invents_keys(self) -> None:
        if not self.keys:
            return
        chosen = self.tracker.order(self.keys)
        assert chosen
        assert set(chosen) <= set(self.keys)
        usable = [k for k in self.keys if self.tracker.available(k)]
        if usable:
            assert chosen == usable
        else:
            assert len(chosen) == 1
            misconfigured = {
                k for k in self.keys if self.tracker.state(k) is BackendState.MISCONFIGURED
            }
            if misconfigured != set(self.keys):
                assert chosen[0] not in misconfigured

    @invariant()
    def at_most_one_trial_in_flight_per_key(self) -> None:
        for key in self.keys:
            trials = [1 for k, trial in self.outstanding if k == key and trial]
            assert len(trials) <= 1
            record = self.store.get(key)
            in_flight = sum(1 for k, _ in self.outstanding if k == key)
            assert (record.in_flight if record else 0) == in_flight


HealthMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHealthMachine = HealthMachine.TestCase

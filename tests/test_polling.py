"""Poll schedules as pure functions: fixed and adaptive, with seeded jitter, no real time."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from imagerouter.polling import (
    DEFAULT_FLOOR_S,
    PRIORS,
    AdaptiveSchedule,
    AdaptiveSchedules,
    DurationModel,
    FixedSchedule,
    PollSchedule,
    expected_polls,
    fixed_expected_polls,
    plan_polls,
    tune_poll_cost,
)

STEADY = DurationModel.from_quantiles(8.0, 10.4)  # a regular backend: p95 = 1.3 x p50
WIDE = DurationModel.from_quantiles(8.0, 30.0)  # the documented text-to-image spread


def draws(model: DurationModel, count: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [math.exp(rng.gauss(model.mu, model.sigma)) for _ in range(count)]


def simulate(schedule: PollSchedule, duration: float) -> tuple[float, int]:
    """(detection delay, polls) for a job finishing at `duration` seconds."""
    elapsed, polls = 0.0, 0
    while True:
        elapsed += schedule.delay(polls, elapsed)
        polls += 1
        if elapsed >= duration:
            return elapsed - duration, polls


# -- FixedSchedule ------------------------------------------------------------------------


def test_fixed_schedule_without_jitter_is_exact_and_honours_first() -> None:
    schedule = FixedSchedule(interval=2.0, jitter=0, first=0.5)
    assert schedule.delay(0, 0.0) == 0.5
    assert [schedule.delay(n, 2.0 * n) for n in range(1, 4)] == [2.0, 2.0, 2.0]


def test_fixed_schedule_jitter_stays_within_bounds_and_is_seedable() -> None:
    one = FixedSchedule(interval=2.0, jitter=0.1, rng=random.Random(3))
    two = FixedSchedule(interval=2.0, jitter=0.1, rng=random.Random(3))
    waits = [one.delay(n, 0.0) for n in range(200)]
    assert waits == [two.delay(n, 0.0) for n in range(200)]
    assert all(1.8 <= wait <= 2.2 for wait in waits)
    assert len(set(waits)) > 100  # jobs started together do not poll in lockstep


# -- DurationModel ------------------------------------------------------------------------


def test_duration_model_reproduces_the_quantiles_it_was_built_from() -> None:
    model = DurationModel.from_quantiles(8.0, 30.0)
    assert model.quantile(0.5) == pytest.approx(8.0)
    assert model.quantile(0.95) == pytest.approx(30.0)
    assert model.survival(8.0) == pytest.approx(0.5)
    assert model.survival(30.0) == pytest.approx(0.05)
    assert model.survival(0.0) == 1.0


def test_hazard_is_density_over_survival() -> None:
    model = WIDE
    for t in (1.0, 8.0, 40.0):
        step = 1e-4
        # hazard = -d/dt ln S(t)
        numeric = -(math.log(model.survival(t + step)) - math.log(model.survival(t - step)))
        assert model.hazard(t) == pytest.approx(numeric / (2 * step), rel=1e-4)
    assert model.hazard(0.0) == 0.0
    assert model.hazard(1e9) > 0  # the far tail stays finite and positive


def test_quantiles_that_make_no_sense_are_refused() -> None:
    with pytest.raises(ValueError, match="p50"):
        DurationModel.from_quantiles(30.0, 8.0)
    with pytest.raises(ValueError, match="p50"):
        DurationModel.from_quantiles(0.0, 8.0)


def test_fit_without_history_is_the_prior() -> None:
    assert DurationModel.fit([], prior=PRIORS["edit"]) == PRIORS["edit"]
    # Durations that cannot be times are ignored, not fatal.
    assert DurationModel.fit([0.0, -1.0, math.nan], prior=WIDE) == WIDE


def test_fit_learns_a_backend_from_its_history_despite_outliers() -> None:
    history = [*draws(STEADY, 200, seed=1), 900.0, 1200.0]  # two collected by `resume`
    fitted = DurationModel.fit(history, prior=PRIORS["generate"])
    assert fitted.median == pytest.approx(8.0, rel=0.05)
    assert fitted.sigma < 0.25  # far narrower than the prior's 0.83
    assert PRIORS["generate"].sigma > 0.8


def test_little_history_moves_the_prior_only_part_way() -> None:
    prior = PRIORS["generate"]
    fitted = DurationModel.fit([30.0], prior=prior)
    assert prior.median < fitted.median < 30.0


# -- plans ----------------------------------------------------------------------------------


def test_plan_waits_then_polls_densely_then_backs_off() -> None:
    plan = plan_polls(STEADY, floor=0.5, poll_cost_s=0.15, max_gap=10.0)
    gaps = [b - a for a, b in zip((0.0, *plan), plan, strict=False)]
    assert plan == tuple(sorted(plan))
    assert all(gap >= 0.5 - 1e-9 for gap in gaps)
    assert all(gap <= 10.0 + 1e-9 for gap in gaps)
    # No poll before 1 in 50 jobs can have finished; the first wait is the longest.
    assert plan[0] >= STEADY.quantile(0.02)
    assert gaps[0] == max(gaps)
    # Around the median, polls are close together.
    near_median = [gap for when, gap in zip(plan, gaps, strict=True) if 7 <= when <= 9]
    assert near_median and max(near_median) < 1.0


def test_plan_never_polls_faster_than_the_floor_even_when_polls_are_cheap() -> None:
    plan = plan_polls(STEADY, floor=1.0, poll_cost_s=1e-4, max_gap=10.0)
    assert min(b - a for a, b in itertools.pairwise(plan)) >= 1.0 - 1e-9


def test_a_plan_always_ends_by_the_999th_percentile() -> None:
    for model in (STEADY, WIDE, DurationModel.from_quantiles(0.3, 0.6)):
        for cost in (1e-3, 1.0, 1e3):  # dense ... as sparse as a plan gets
            plan = plan_polls(model, poll_cost_s=cost)
            # The last poll is at the percentile, or less than one floor (0.5 s) before it.
            assert plan and plan[-1] > model.quantile(0.999) - DEFAULT_FLOOR_S


def test_plan_rejects_a_bad_floor() -> None:
    with pytest.raises(ValueError, match="floor"):
        plan_polls(STEADY, floor=0.0)
    with pytest.raises(ValueError, match="floor"):
        plan_polls(STEADY, floor=2.0, max_gap=1.0)


def test_a_budget_is_spent_as_asked() -> None:
    fixed = fixed_expected_polls(WIDE, 2.0)
    for fraction in (0.5, 1.0):
        cost = tune_poll_cost(WIDE, fraction * fixed)
        plan = plan_polls(WIDE, poll_cost_s=cost)
        assert expected_polls(plan, WIDE, 10.0) == pytest.approx(fraction * fixed, rel=0.05)


def test_expected_polls_match_a_simulation() -> None:
    schedule = AdaptiveSchedule.from_model(WIDE, jitter=0)
    simulated = statistics.mean(simulate(schedule, d)[1] for d in draws(WIDE, 4000, seed=2))
    expected = expected_polls(schedule.plan, WIDE, schedule.tail_gap)
    assert simulated == pytest.approx(expected, rel=0.05)


# -- AdaptiveSchedule -------------------------------------------------------------------------


def test_delay_follows_the_plan_by_elapsed_time() -> None:
    schedule = AdaptiveSchedule(plan=(5.0, 7.0, 7.6), floor=0.5, tail_gap=3.0, jitter=0)
    assert schedule.delay(0, 0.0) == 5.0
    assert schedule.delay(1, 5.1) == pytest.approx(1.9)
    # A slow poll that lands past a planned time skips it rather than polling twice.
    assert schedule.delay(2, 7.3) == pytest.approx(0.5)  # 7.6 is 0.3 s away: the floor wins
    assert schedule.delay(3, 7.7) == pytest.approx(3.0)  # past the plan: every tail_gap
    assert schedule.delay(9, 100.0) == pytest.approx(3.0)


def test_jitter_only_ever_delays_and_is_seedable() -> None:
    plan = plan_polls(STEADY)
    base = AdaptiveSchedule(plan=plan, jitter=0)
    one = AdaptiveSchedule(plan=plan, jitter=0.1, rng=random.Random(9))
    two = AdaptiveSchedule(plan=plan, jitter=0.1, rng=random.Random(9))
    for elapsed in (0.0, 6.0, 8.2, 9.9, 30.0):
        exact = base.delay(0, elapsed)
        jittered = one.delay(0, elapsed)
        assert jittered == two.delay(0, elapsed)
        assert exact <= jittered <= exact * 1.1 + 1e-9
        assert jittered >= DEFAULT_FLOOR_S


def test_jitter_does_not_add_polls() -> None:
    plain = AdaptiveSchedule.from_model(WIDE, jitter=0)
    jittery = AdaptiveSchedule.from_model(WIDE, jitter=0.1, rng=random.Random(4))
    durations = draws(WIDE, 2000, seed=5)
    polls = statistics.mean(simulate(plain, d)[1] for d in durations)
    polls_jittered = statistics.mean(simulate(jittery, d)[1] for d in durations)
    assert polls_jittered <= polls * 1.02


def test_history_moves_the_first_poll() -> None:
    fast = AdaptiveSchedule.from_history(draws(DurationModel.from_quantiles(3, 4), 100))
    slow = AdaptiveSchedule.from_history(draws(DurationModel.from_quantiles(25, 32), 100))
    assert fast.plan[0] < 3 < slow.plan[0] < 25
    # Without history, the documented latencies: edits start later than generations.
    generate = AdaptiveSchedule.from_history([], operation="generate")
    edit = AdaptiveSchedule.from_history([], operation="edit")
    assert generate.plan[0] < edit.plan[0]


def test_on_a_regular_backend_adaptive_beats_the_2s_loop_on_both_counts() -> None:
    durations = draws(STEADY, 3000, seed=6)
    adaptive = AdaptiveSchedule.from_history(draws(STEADY, 100, seed=7), rng=random.Random(1))
    fixed = FixedSchedule(2.0, rng=random.Random(1))
    ours = [simulate(adaptive, d) for d in durations]
    theirs = [simulate(fixed, d) for d in durations]
    assert statistics.median(d for d, _ in ours) < 0.5 * statistics.median(d for d, _ in theirs)
    assert statistics.mean(p for _, p in ours) <= statistics.mean(p for _, p in theirs)


def test_a_smaller_budget_spends_fewer_polls_for_more_delay() -> None:
    history = draws(WIDE, 100, seed=8)
    durations = draws(WIDE, 2000, seed=9)
    full = AdaptiveSchedule.from_history(history, jitter=0)
    half = AdaptiveSchedule.from_history(history, poll_budget=0.5, jitter=0)
    full_runs = [simulate(full, d) for d in durations]
    half_runs = [simulate(half, d) for d in durations]
    assert statistics.mean(p for _, p in half_runs) < 0.6 * statistics.mean(p for _, p in full_runs)
    assert statistics.mean(d for d, _ in half_runs) > statistics.mean(d for d, _ in full_runs)


# -- AdaptiveSchedules (per backend, cached) ----------------------------------------------------


class FakeLedger:
    def __init__(self, history: dict[tuple[str, str, str], list[float]]) -> None:
        self.history = history
        self.calls: list[tuple[str, str, str]] = []

    def latencies(self, provider: str, model: str, operation: str) -> list[float]:
        self.calls.append((provider, model, operation))
        return self.history.get((provider, model, operation), [])


def test_schedules_are_learned_per_backend_and_cached() -> None:
    key_fast = ("runapi", "gpt-image-2", "generate")
    key_slow = ("runflow", "gpt-image-2", "generate")
    ledger = FakeLedger(
        {
            key_fast: draws(DurationModel.from_quantiles(3, 4), 50),
            key_slow: draws(DurationModel.from_quantiles(25, 32), 50),
        }
    )
    now = [0.0]
    book = AdaptiveSchedules(ledger.latencies, clock=lambda: now[0], rng=random.Random(1))
    fast = book.for_backend(*key_fast)
    slow = book.for_backend(*key_slow)
    assert fast.plan[0] < slow.plan[0]
    again = book.for_backend(*key_fast)
    assert again is not fast and again.plan is fast.plan  # a new object, the same plan
    assert ledger.calls == [key_fast, key_slow]
    now[0] = 61.0  # past max_age_s: the history is read again
    book.for_backend(*key_fast)
    assert ledger.calls == [key_fast, key_slow, key_fast]


def test_schedules_without_a_ledger_use_the_documented_priors_and_floors() -> None:
    book = AdaptiveSchedules(None, floors={"runapi": 0.75}, rng=random.Random(2))
    edit = book.for_backend("runapi", "gpt-image-2", "edit")
    assert edit.plan == AdaptiveSchedule.from_history([], operation="edit", floor=0.75).plan
    assert edit.floor == 0.75
    assert book.for_backend("someone-else", "gpt-image-2", "generate").floor == DEFAULT_FLOOR_S


def test_a_broken_ledger_falls_back_to_the_prior() -> None:
    def broken(provider: str, model: str, operation: str) -> list[float]:
        raise RuntimeError("database is locked")

    book = AdaptiveSchedules(broken, rng=random.Random(3))
    schedule = book.for_backend("runflow", "gpt-image-1.5", "generate")
    assert schedule.plan == AdaptiveSchedule.from_history([], operation="generate").plan


def test_forget_drops_cached_plans() -> None:
    ledger = FakeLedger({})
    book = AdaptiveSchedules(ledger.latencies)
    book.for_backend("runapi", "gpt-image-2", "generate")
    book.forget()
    book.for_backend("runapi", "gpt-image-2", "generate")
    assert len(ledger.calls) == 2


def test_a_caller_can_supply_its_own_priors() -> None:
    quick = DurationModel.from_quantiles(0.3, 0.6)  # e.g. emulators with a set latency
    book = AdaptiveSchedules(None, priors={"generate": quick}, rng=random.Random(4))
    schedule = book.for_backend("runapi", "gpt-image-2", "generate")
    # Within the 2 s loop's budget (one poll), but by the 99.9th percentile, not at 2 s.
    assert schedule.plan == (pytest.approx(quick.quantile(0.999)),)
    assert schedule.plan[0] < 2.0 < AdaptiveSchedule.from_history([]).plan[0]
    # An operation without a supplied prior keeps the documented one.
    edit = book.for_backend("runapi", "gpt-image-2", "edit")
    assert edit.plan == AdaptiveSchedule.from_history([], operation="edit").plan

"""Budgets: reservations that settle or release, UTC windows, and no overshoot under races."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from imagerouter.budget import Budget, BudgetLimits, Reservation
from imagerouter.errors import BudgetExceededError
from imagerouter.ledger import Ledger

D = Decimal
T0 = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Ledger:
    return Ledger(tmp_path / "ledger.db", now=clock)


def budget(ledger: Ledger, clock: Clock, **limits: str) -> Budget:
    return Budget(BudgetLimits(**{k: D(v) for k, v in limits.items()}), ledger, now=clock)


def test_reserve_settle_release_arithmetic(ledger: Ledger, clock: Clock) -> None:
    b = budget(ledger, clock, daily_usd="1.00")
    first = b.reserve("r1", D("0.30"))
    second = b.reserve("r2", D("0.25"))
    assert ledger.committed_usd(None) == D("0.55")
    b.settle(first, D("0.10"))  # billed less than quoted: the difference is freed
    assert ledger.committed_usd(None) == D("0.35")
    b.release(second)
    assert ledger.committed_usd(None) == D("0.10")
    b.release(second)  # twice is harmless
    assert ledger.committed_usd(None) == D("0.10")
    with pytest.raises(ValueError, match="already settled"):
        b.release(first)
    b.settle(first, D("0.12"))  # a later, truer figure replaces the first
    assert ledger.committed_usd(None) == D("0.12")
    assert b.status()["daily_usd"] == {"limit": "1.00", "committed": "0.12", "remaining": "0.88"}
    with pytest.raises(KeyError):
        b.settle(Reservation("rsv_missing", "r9", D(1)), D(1))


def test_a_request_that_does_not_fit_is_refused_and_leaves_nothing(
    ledger: Ledger, clock: Clock
) -> None:
    b = budget(ledger, clock, daily_usd="0.50")
    b.reserve("r1", D("0.45"))
    with pytest.raises(BudgetExceededError) as refused:
        b.reserve("r2", D("0.10"))
    assert str(refused.value) == (
        "budget.daily_usd: 0.10 USD needed, 0.45 of 0.50 already spent or reserved today"
    )
    assert refused.value.limit == "budget.daily_usd"
    assert refused.value.needed_usd == D("0.10")
    assert ledger.committed_usd(None) == D("0.45")
    b.reserve("r3", D("0.05"))  # exactly up to the limit fits
    assert ledger.committed_usd(None) == D("0.50")


def test_yesterdays_spend_does_not_count_today(ledger: Ledger, clock: Clock) -> None:
    b = budget(ledger, clock, daily_usd="0.50", monthly_usd="0.80")
    clock.current = datetime(2025, 3, 30, 23, 59, 59, tzinfo=UTC)
    b.settle(b.reserve("yesterday", D("0.50")), D("0.50"))
    clock.current = datetime(2025, 3, 31, 0, 0, tzinfo=UTC)
    b.reserve("today", D("0.30"))  # fits the day, and 0.80 of the month
    with pytest.raises(BudgetExceededError, match=r"^budget\.monthly_usd: .* this month$"):
        b.reserve("more", D("0.01"))
    status = b.status()
    assert status["daily_usd"]["committed"] == "0.30"
    assert status["monthly_usd"] == {"limit": "0.80", "committed": "0.80", "remaining": "0.00"}
    assert status["total_usd"] == {"limit": None, "committed": "0.80", "remaining": None}


def test_the_month_starts_again_on_the_first_utc(ledger: Ledger, clock: Clock) -> None:
    b = budget(ledger, clock, monthly_usd="1.00", total_usd="1.50")
    b.reserve("march", D("1.00"))
    with pytest.raises(BudgetExceededError, match="monthly_usd"):
        b.reserve("still-march", D("0.01"))
    clock.current = datetime(2025, 4, 1, 0, 0, tzinfo=UTC)
    b.reserve("april", D("0.50"))
    with pytest.raises(BudgetExceededError) as refused:
        b.reserve("april-2", D("0.01"))
    assert str(refused.value) == (
        "budget.total_usd: 0.01 USD needed, 1.50 of 1.50 already spent or reserved in total"
    )


def test_a_non_utc_clock_uses_the_utc_day(ledger: Ledger, clock: Clock) -> None:
    # 17:00 on 1 April in Tokyo; Tokyo's midnight would still be 31 March in UTC.
    tokyo = datetime(2025, 4, 1, 8, 0, tzinfo=UTC).astimezone(ZoneInfo("Asia/Tokyo"))
    clock.current = datetime(2025, 3, 31, 23, 0, tzinfo=UTC)
    b = budget(ledger, clock, daily_usd="0.50")
    b.reserve("late-march", D("0.50"))
    clock.current = tokyo
    b.reserve("april-1", D("0.50"))
    assert b.status()["daily_usd"]["committed"] == "0.50"


def test_the_per_request_cap(ledger: Ledger, clock: Clock) -> None:
    b = budget(ledger, clock)
    b.check_request(D("0.25"), D("0.25"))
    b.check_request(D("9"), None)
    with pytest.raises(BudgetExceededError) as refused:
        b.check_request(D("0.40"), D("0.25"))
    assert str(refused.value) == (
        "max_cost_usd: the request costs 0.40 USD, above the cap of 0.25 USD"
    )
    assert refused.value.limit == "max_cost_usd"


def test_without_limits_reservations_are_still_recorded(ledger: Ledger, clock: Clock) -> None:
    b = budget(ledger, clock)
    reservation = b.reserve("r1", D("123.45"))
    assert reservation.request_id == "r1" and reservation.amount == D("123.45")
    assert ledger.committed_usd(None) == D("123.45")
    assert b.status()["daily_usd"] == {"limit": None, "committed": "123.45", "remaining": None}


def test_limits_must_be_non_negative_decimals() -> None:
    with pytest.raises(ValueError, match="daily_usd"):
        BudgetLimits(daily_usd=D("-1"))
    with pytest.raises(ValueError, match="total_usd"):
        BudgetLimits(total_usd=0.5)  # type: ignore[arg-type]


# --- concurrency ---------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["one-ledger", "ledger-per-thread"])
def test_ten_threads_cannot_overshoot(tmp_path: Path, shared: bool) -> None:
    path = tmp_path / "ledger.db"
    first = Ledger(path)
    ledgers = [first if shared or n == 0 else Ledger(path) for n in range(10)]
    gate = threading.Barrier(10)
    outcomes: list[str] = []

    def spend(n: int) -> None:
        b = Budget(BudgetLimits(daily_usd=D("0.50")), ledgers[n])
        gate.wait()
        try:
            b.reserve(f"r{n}", D("0.10"))
            outcomes.append("ok")
        except BudgetExceededError:
            outcomes.append("refused")

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["ok"] * 5 + ["refused"] * 5
    assert first.committed_usd(None) == D("0.50")


def _reserve_in_a_process(path: str, n: int, gate: object, results: object) -> None:
    gate.wait()  # type: ignore[attr-defined]
    with Ledger(path) as ledger:  # opened concurrently: migrations and WAL switch race too
        budget = Budget(BudgetLimits(daily_usd=D("0.50")), ledger)
        for k in range(3):
            try:
                budget.reserve(f"p{n}-{k}", D("0.10"))
                results.put("ok")  # type: ignore[attr-defined]
            except BudgetExceededError:
                results.put("refused")  # type: ignore[attr-defined]


def test_four_processes_sharing_the_file_cannot_overshoot(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "ledger.db"
    context = multiprocessing.get_context("fork")
    gate = context.Barrier(4)
    results = context.Queue()
    workers = [
        context.Process(target=_reserve_in_a_process, args=(str(path), n, gate, results))
        for n in range(4)
    ]
    for w in workers:
        w.start()
    outcomes = sorted(results.get(timeout=30) for _ in range(12))
    for w in workers:
        w.join(timeout=30)
    assert [w.exitcode for w in workers] == [0] * 4
    assert outcomes == ["ok"] * 5 + ["refused"] * 7
    with Ledger(path) as ledger:
        assert ledger.committed_usd(None) == D("0.50")

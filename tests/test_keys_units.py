"""Per-key limits, unit by unit: config entries, key matching, the rpm window on an injected
clock, and scoped budget reservations that never overshoot under threads (issue 12)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from imagerouter.budget import (
    Budget,
    BudgetLimits,
    BudgetScope,
    budget_scopes,
    current_key_name,
    current_scopes,
)
from imagerouter.config import GatewayKey, load_config
from imagerouter.errors import BudgetExceededError, ConfigError
from imagerouter.gateway.auth import KeyCheck
from imagerouter.gateway.key_limits import KeyLimits, RateWindow
from imagerouter.ledger import Ledger

from .conftest import MakeRouter


def keys_config(*entries: object) -> list[GatewayKey]:
    return load_config({"gateway": {"api_keys": list(entries)}}).gateway.api_keys


def test_plain_keys_are_named_by_position_and_mappings_by_their_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEAM_A_KEY", "team-a-from-env-1234")
    keys = keys_config(
        "plain-one-1234",
        {
            "key": "${TEAM_A_KEY}",
            "name": "team-a",
            "daily_usd": "5",
            "monthly_usd": "100",
            "rpm": 60,
        },
        {"key": "unnamed-3-1234"},
    )
    assert [k.name for k in keys] == ["key-1", "team-a", "key-3"]
    team = keys[1]
    assert team.get_secret_value() == "team-a-from-env-1234"
    assert (team.daily_usd, team.monthly_usd, team.rpm) == (Decimal("5"), Decimal("100"), 60)
    assert "team-a-from-env-1234" not in repr(keys)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "x", "key": 12345678901}], "gateway.api_keys[0].key: must be text"),
        ([{"nested": "sk-live-SECRET123"}], "gateway.api_keys[0].key: is required"),
        (["same-key-SECRET", "same-key-SECRET"], "the same gateway key is listed twice"),
        (
            [{"key": "a-SECRET1", "name": "t"}, {"key": "b-SECRET2", "name": "t"}],
            "two gateway keys are named t",
        ),
        ([{"key": "a-SECRET1", "name": "has space"}], "a key name is 1-64 letters"),
        ([{"key": "a-SECRET1", "rpm": 0}], "rpm: must be a number at least 1"),
        ([{"key": "a-SECRET1", "daily_usd": "-1"}], "daily_usd: must be a number at least 0"),
        ([["a-SECRET1"]], "each key must be text or a mapping"),
    ],
)
def test_bad_key_entries_are_one_clear_line_without_the_secret(
    entries: list[object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"gateway": {"api_keys": entries}})
    assert message in str(caught.value)
    assert "SECRET" not in str(caught.value) and "12345678901" not in str(caught.value)


def test_key_check_identifies_the_matching_key() -> None:
    keys = keys_config("alpha-key-1234", {"key": "beta-key-5678", "name": "beta"})
    check = KeyCheck(keys)
    assert check.identify("Bearer beta-key-5678") is keys[1]
    assert check.identify("bearer  alpha-key-1234 ") is keys[0]
    for wrong in (None, "", "Bearer", "Bearer beta-key-567", "Basic beta-key-5678"):
        assert check.identify(wrong) is None
        assert not check.allows(wrong)
    assert KeyCheck([]).allows(None) and KeyCheck([]).identify("Bearer x") is None


def test_rate_window_slides_on_the_injected_clock() -> None:
    now = [0.0]
    window = RateWindow(2, clock=lambda: now[0])
    assert window.admit() is None
    now[0] = 10.0
    assert window.admit() is None
    assert window.admit() == pytest.approx(50.0)  # the first call leaves the window at 60
    now[0] = 60.0
    assert window.admit() is None  # refused calls were not counted
    assert window.admit() == pytest.approx(10.0)


def test_key_limits_raise_openai_rate_limit_errors() -> None:
    keys = keys_config({"key": "rated-key-1234", "name": "rated", "rpm": 1}, "free-key-1234")
    now = [5.0]
    limits = KeyLimits(keys, clock=lambda: now[0])
    limits.admit(keys[0])
    with pytest.raises(Exception) as caught:
        limits.admit(keys[0])
    error = caught.value
    assert getattr(error, "status", None) == 429
    assert getattr(error, "code", None) == "rate_limit_exceeded"
    assert getattr(error, "headers", {})["retry-after"] == "60"
    assert "rated-key-1234" not in str(error) and "rated" in str(error)
    for _ in range(5):
        limits.admit(keys[1])  # no rpm: never limited
    limits.admit(None)
    scope = limits.scope(keys[0])
    assert scope is not None and scope.label == "key:rated"


def test_key_budgets_need_the_ledger() -> None:
    config = load_config(
        {
            "ledger": {"enabled": False},
            "gateway": {"api_keys": [{"key": "k-123456", "daily_usd": "1"}]},
        }
    )
    with pytest.raises(ConfigError, match="per-key budgets"):
        KeyLimits(config.gateway.api_keys).check(config)
    rated_only = load_config(
        {"ledger": {"enabled": False}, "gateway": {"api_keys": [{"key": "k-123456", "rpm": 5}]}}
    )
    KeyLimits(rated_only.gateway.api_keys).check(rated_only)


def test_scoped_reservations_never_overshoot_under_threads(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    budget = Budget(
        BudgetLimits(total_usd=Decimal("100")),
        ledger,
        now=lambda: datetime(2026, 12, 2, 12, tzinfo=UTC),
    )
    team = BudgetScope("key", "team-a", BudgetLimits(daily_usd=Decimal("0.30")))
    other = BudgetScope("mcp", "claude", BudgetLimits(monthly_usd=Decimal("1")))
    won: list[str] = []
    refused: list[BudgetExceededError] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            budget.reserve(f"req-{i}", Decimal("0.10"), scopes=[team])
        except BudgetExceededError as exc:
            with lock:
                refused.append(exc)
        else:
            with lock:
                won.append(f"req-{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(won), len(refused)) == (3, 9)
    assert {exc.scope for exc in refused} == {"key:team-a"}
    assert {exc.limit for exc in refused} == {"key:team-a.daily_usd"}
    # Another scope, and the global budget, are not held by team-a's limit.
    budget.reserve("req-other", Decimal("0.50"), scopes=[other])
    assert ledger.committed_usd(None, scope="key:team-a") == Decimal("0.30")
    assert ledger.committed_usd(None) == Decimal("0.80")
    status = budget.status(scope=team)
    assert status["daily_usd"] == {"limit": "0.30", "committed": "0.30", "remaining": "0.00"}
    assert budget.status()["total_usd"]["committed"] == "0.80"
    ledger.close()


def test_budget_scopes_reach_threads_and_nest(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    budget = Budget(BudgetLimits(), ledger)
    team = BudgetScope("key", "team-a", BudgetLimits(daily_usd=Decimal("0.10")))
    client = BudgetScope("mcp", "claude")

    async def main() -> None:
        with budget_scopes(client), budget_scopes(team):
            assert current_scopes() == (client, team) and current_key_name() == "team-a"
            await asyncio.to_thread(budget.reserve, "r1", Decimal("0.10"))
            with pytest.raises(BudgetExceededError):
                await asyncio.to_thread(budget.reserve, "r2", Decimal("0.01"))
        assert current_scopes() == () and current_key_name() is None
        budget.reserve("r3", Decimal("0.05"))  # outside: global only

    asyncio.run(main())
    assert ledger.committed_usd(None, scope="mcp:claude") == Decimal("0.10")
    assert ledger.committed_usd(None) == Decimal("0.15")
    with pytest.raises(ValueError, match="scope"):
        BudgetScope("key", "has space")
    ledger.close()


def test_the_router_records_the_key_name_on_its_request(make_router: MakeRouter) -> None:
    router = make_router()
    scope = BudgetScope("key", "team-a", BudgetLimits(daily_usd=Decimal("1")))

    # The sync twin runs on the Router's portal thread: the caller's scopes go with it.
    with budget_scopes(scope):
        router.generate("a fox")
    router.generate("an unscoped fox")
    assert router.ledger is not None
    rows = {row.key: row for row in router.ledger.spend(by="key")}
    assert rows["team-a"].requests == 1 and rows["team-a"].quoted_usd == Decimal("0.06")
    assert rows["-"].requests == 1
    assert router.ledger.committed_usd(None, scope="key:team-a") == Decimal("0.06")
    tight = BudgetScope("key", "team-a", BudgetLimits(daily_usd=Decimal("0.10")))
    with budget_scopes(tight), pytest.raises(BudgetExceededError):
        router.generate("one fox too many")

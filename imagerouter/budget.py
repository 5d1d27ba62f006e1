"""Cost limits: a per-request cap, and daily / monthly / total budgets that cannot overshoot.

The router reserves a request's whole quoted cost (every fan-out task) before the first paid
call, settles it with the billed cost afterwards, or releases it when nothing was accepted.
Reservations are rows in the ledger, checked and inserted in one immediate transaction, so
threads and processes sharing a ledger file cannot together pass a limit. Windows are UTC:
the day and month start at midnight UTC; a reservation counts in the window it was made in.
A reservation left open by a killed process keeps counting (the call may have been paid)
until `imagerouter resume` settles it from its attempt's tasks (or releases it when nothing
was sent).

Scoped budgets sit on top of the global one: a gateway key (`key:team-a`) or an MCP client
(`mcp:<client>`) has its own limits, and a reservation made for it is checked against the
global limits and the scope's in the same transaction, so one scope's concurrent requests
never overshoot either. The scope reaches `reserve` either explicitly (`scopes=`) or from the
context (`budget_scopes(...)`), which asyncio tasks and `asyncio.to_thread` inherit; that is
how the gateway hands a key's scope through the router without threading it through every
call.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal

from .errors import BudgetExceededError
from .ledger import Ledger

__all__ = [
    "KEY_SCOPE",
    "Budget",
    "BudgetLimits",
    "BudgetScope",
    "Reservation",
    "budget_scopes",
    "current_key_name",
    "current_mcp_client",
    "current_scopes",
]

KEY_SCOPE = "key"  # the scope kind of a gateway API key; its name is the key's `name`


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class BudgetLimits:
    """Configured limits in USD; None means no limit of that kind."""

    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None
    total_usd: Decimal | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (not isinstance(value, Decimal) or value < 0):
                raise ValueError(f"budget.{f.name} must be a non-negative Decimal, not {value!r}")


@dataclass(frozen=True)
class BudgetScope:
    """Limits of one spender on top of the global budget: `BudgetScope("key", "team-a", ...)`.

    `name` is an operator-chosen label (never derived from a secret): it is stored in the
    ledger and shown in errors and reports."""

    kind: str
    name: str
    limits: BudgetLimits = BudgetLimits()

    def __post_init__(self) -> None:
        # The label "<kind>:<name>" must split back unambiguously and read as one word.
        text = self.kind + self.name
        if not self.kind or not self.name or ":" in self.kind or any(c.isspace() for c in text):
            raise ValueError(
                "a budget scope needs a kind (no ':') and a name, both without spaces, "
                f"not {self.kind!r}/{self.name!r}"
            )

    @property
    def label(self) -> str:
        """How the ledger records the scope: "<kind>:<name>"."""
        return f"{self.kind}:{self.name}"


_SCOPES: ContextVar[tuple[BudgetScope, ...]] = ContextVar("imagerouter_budget_scopes", default=())


@contextmanager
def budget_scopes(*scopes: BudgetScope) -> Iterator[None]:
    """Every reservation made inside (and in tasks or threads started inside) also counts
    against `scopes`. Nested uses add to the outer scopes."""
    token = _SCOPES.set(_SCOPES.get() + scopes)
    try:
        yield
    finally:
        _SCOPES.reset(token)


def current_scopes() -> tuple[BudgetScope, ...]:
    return _SCOPES.get()


def current_mcp_client() -> str | None:
    """The MCP client this request runs for (`imagerouter mcp`: scope `mcp:<client>`; `mcp:*`
    is every MCP call together), recorded on the ledger's request row."""
    return next((s.name for s in _SCOPES.get() if s.kind == "mcp" and s.name != "*"), None)


def current_key_name() -> str | None:
    """The gateway key this request runs for (recorded on the ledger's request row)."""
    return next((s.name for s in _SCOPES.get() if s.kind == KEY_SCOPE), None)


def _period_of(window: str) -> str:
    return {"daily_usd": "today", "monthly_usd": "this month"}.get(window, "in total")


@dataclass(frozen=True)
class Reservation:
    """Money held for one request until it is settled or released."""

    id: str
    request_id: str
    amount: Decimal


class Budget:
    """Budget checks and reservations against one ledger."""

    def __init__(
        self,
        limits: BudgetLimits,
        ledger: Ledger,
        *,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.limits = limits
        self.ledger = ledger
        self._now = now

    def _windows(
        self, limits: BudgetLimits | None = None
    ) -> list[tuple[str, datetime | None, Decimal | None]]:
        limits = self.limits if limits is None else limits
        now = self._now().astimezone(UTC)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return [
            ("daily_usd", day, limits.daily_usd),
            ("monthly_usd", day.replace(day=1), limits.monthly_usd),
            ("total_usd", None, limits.total_usd),
        ]

    def check_request(self, amount: Decimal, max_cost_usd: Decimal | None) -> None:
        """Refuse a request whose quoted cost is above its own cap."""
        if max_cost_usd is not None and amount > max_cost_usd:
            raise BudgetExceededError(
                f"max_cost_usd: the request costs {amount:f} USD, above the cap of "
                f"{max_cost_usd:f} USD",
                limit="max_cost_usd",
                needed_usd=amount,
            )

    def reserve(
        self,
        request_id: str,
        amount: Decimal,
        *,
        attempt_id: str | None = None,
        scopes: Sequence[BudgetScope] | None = None,
    ) -> Reservation:
        """Hold `amount` against every configured limit, or raise BudgetExceededError.

        `scopes` (default: those of `budget_scopes` in the current context) are checked too,
        and the reservation is recorded under each. With no limits configured the reservation
        is still recorded, so `status()` and later limits see the spend.
        """
        chosen = current_scopes() if scopes is None else tuple(scopes)
        reservation = Reservation(f"rsv_{uuid.uuid4().hex}", request_id, amount)
        limits = [
            (f"budget.{name}", start, limit)
            for name, start, limit in self._windows()
            if limit is not None
        ]
        scoped = [
            (scope.label, f"{scope.label}.{name}", start, limit)
            for scope in chosen
            for name, start, limit in self._windows(scope.limits)
            if limit is not None
        ]
        self.ledger.reserve(
            reservation.id,
            request_id=request_id,
            amount=amount,
            limits=limits,
            attempt_id=attempt_id,
            scopes=[scope.label for scope in chosen],
            scoped_limits=scoped,
        )
        return reservation

    def check_fits(self, amount: Decimal, *, scopes: Sequence[BudgetScope]) -> None:
        """Raise BudgetExceededError if `amount` does not fit a scope's limits right now.

        Read-only and not atomic: an early answer for callers that cannot give one later (a
        streamed response has sent its 200 by the time the job reserves); `reserve` stays the
        check that holds under concurrency."""
        for scope in scopes:
            for name, start, limit in self._windows(scope.limits):
                if limit is None:
                    continue
                committed = self.ledger.committed_usd(start, scope=scope.label)
                if committed + amount > limit:
                    raise BudgetExceededError(
                        f"{scope.label}.{name}: {amount:f} USD needed, {committed:f} of "
                        f"{limit:f} already spent or reserved {_period_of(name)}",
                        limit=f"{scope.label}.{name}",
                        needed_usd=amount,
                        scope=scope.label,
                    )

    def settle(self, reservation: Reservation, amount: Decimal) -> None:
        """Record the final spend: the billed cost, or the quote when none was reported."""
        self.ledger.settle(reservation.id, amount=amount)

    def release(self, reservation: Reservation) -> None:
        """Nothing was accepted, so nothing was billed."""
        self.ledger.release(reservation.id)

    def status(self, *, scope: BudgetScope | None = None) -> dict[str, dict[str, str | None]]:
        """Per limit: the limit, what is spent or reserved in its window, and what remains
        (of the global budget, or of one scope's)."""
        report: dict[str, dict[str, str | None]] = {}
        limits = None if scope is None else scope.limits
        label = None if scope is None else scope.label
        for name, start, limit in self._windows(limits):
            committed = self.ledger.committed_usd(start, scope=label)
            report[name] = {
                "limit": None if limit is None else f"{limit:f}",
                "committed": f"{committed:f}",
                "remaining": None if limit is None else f"{max(limit - committed, Decimal(0)):f}",
            }
        return report

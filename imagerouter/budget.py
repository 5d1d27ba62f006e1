"""Cost limits: a per-request cap, and daily / monthly / total budgets that cannot overshoot.

The router reserves a request's whole quoted cost (every fan-out task) before the first paid
call, settles it with the billed cost afterwards, or releases it when nothing was accepted.
Reservations are rows in the ledger, checked and inserted in one immediate transaction, so
threads and processes sharing a ledger file cannot together pass a limit. Windows are UTC:
the day and month start at midnight UTC; a reservation counts in the window it was made in.
A reservation left open by a killed process keeps counting (the call may have been paid)
until `imagerouter resume` settles it from its attempt's tasks (or releases it when nothing
was sent).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal

from .errors import BudgetExceededError
from .ledger import Ledger

__all__ = ["Budget", "BudgetLimits", "Reservation"]


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

    def _windows(self) -> list[tuple[str, datetime | None, Decimal | None]]:
        now = self._now().astimezone(UTC)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return [
            ("daily_usd", day, self.limits.daily_usd),
            ("monthly_usd", day.replace(day=1), self.limits.monthly_usd),
            ("total_usd", None, self.limits.total_usd),
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
        self, request_id: str, amount: Decimal, *, attempt_id: str | None = None
    ) -> Reservation:
        """Hold `amount` against every configured limit, or raise BudgetExceededError.

        With no limits configured the reservation is still recorded, so `status()` and later
        limits see the spend.
        """
        reservation = Reservation(f"rsv_{uuid.uuid4().hex}", request_id, amount)
        limits = [
            (f"budget.{name}", start, limit)
            for name, start, limit in self._windows()
            if limit is not None
        ]
        self.ledger.reserve(
            reservation.id,
            request_id=request_id,
            amount=amount,
            limits=limits,
            attempt_id=attempt_id,
        )
        return reservation

    def settle(self, reservation: Reservation, amount: Decimal) -> None:
        """Record the final spend: the billed cost, or the quote when none was reported."""
        self.ledger.settle(reservation.id, amount=amount)

    def release(self, reservation: Reservation) -> None:
        """Nothing was accepted, so nothing was billed."""
        self.ledger.release(reservation.id)

    def status(self) -> dict[str, dict[str, str | None]]:
        """Per limit: the limit, what is spent or reserved in its window, and what remains."""
        report: dict[str, dict[str, str | None]] = {}
        for name, start, limit in self._windows():
            committed = self.ledger.committed_usd(start)
            report[name] = {
                "limit": None if limit is None else f"{limit:f}",
                "committed": f"{committed:f}",
                "remaining": None if limit is None else f"{max(limit - committed, Decimal(0)):f}",
            }
        return report

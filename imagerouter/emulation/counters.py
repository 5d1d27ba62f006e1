"""What an emulator saw (creates, polls, money billed, faults fired); tests assert on it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

__all__ = ["EmulatorCounters"]

_INT_FIELDS = frozenset({"created", "replayed", "failed", "polls", "uploads", "downloads"})


@dataclass
class EmulatorCounters:
    """Counts kept by an emulator. Change them only through `bump()`, `bump_fault()` and
    `add_billed()`: those take a lock, because uvicorn serves from another thread."""

    created: int = 0  # jobs created (each may be billed): the "paid creates"
    replayed: int = 0  # creates answered from an idempotency replay (not new jobs)
    billed_usd: Decimal = Decimal(0)  # sum of the costs of jobs that succeeded
    failed: int = 0
    polls: int = 0
    uploads: int = 0
    downloads: int = 0
    faults: dict[str, int] = field(default_factory=dict)  # "create:503" -> count
    _lock: threading.Lock = field(
        default_factory=threading.Lock, repr=False, compare=False, init=False
    )

    def bump(self, name: str, amount: int = 1) -> None:
        """Add `amount` to a counter; a name with a colon ("create:503") counts a fault."""
        with self._lock:
            if ":" in name:
                self.faults[name] = self.faults.get(name, 0) + amount
            elif name in _INT_FIELDS:
                setattr(self, name, getattr(self, name) + amount)
            else:
                raise ValueError(
                    f"unknown counter {name!r}; use one of {', '.join(sorted(_INT_FIELDS))} "
                    "or 'endpoint:fault'"
                )

    def bump_fault(self, endpoint: str, kind: str) -> None:
        """Count one injected fault as "endpoint:kind"."""
        self.bump(f"{endpoint}:{kind}")

    def add_billed(self, amount: Decimal) -> None:
        if not isinstance(amount, Decimal):
            raise TypeError(f"billed amounts are Decimal, not {type(amount).__name__}")
        with self._lock:
            self.billed_usd += amount

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of every counter (faults as a new dict)."""
        with self._lock:
            out: dict[str, Any] = {
                f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")
            }
            out["faults"] = dict(self.faults)
            return out

    def reset(self) -> None:
        """Zero everything (between phases of one test)."""
        with self._lock:
            for name in _INT_FIELDS:
                setattr(self, name, 0)
            self.billed_usd = Decimal(0)
            self.faults.clear()

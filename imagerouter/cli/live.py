"""The live table `generate` and `edit` show on a terminal: every attempt, with its outcome.

Rows come from two sources: the router's progress notes (a task's state while it runs) and
the `on_attempt` hook (how an attempt ended, and why). Attempts run one after another, so a
note belongs to the attempt after the last one that ended. A failed attempt keeps its row and
its reason; the next backend gets rows of its own, so failover is visible as it happens. A
create answered from a same-key replay (RunAPI's Idempotency-Key) says so on its row.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.table import Table

from ..events import AttemptEvent
from ..execution import Progress
from ..hookspecs import hookimpl
from .text import cell, fold_table

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["AttemptBoard", "AttemptRow"]

_REPLAYED = "replayed with the same key: one task"


@dataclass
class AttemptRow:
    attempt: int
    provider: str
    model: str = ""
    task: str = ""  # "1/2"; empty when the attempt failed before creating any task
    state: str = ""
    elapsed_s: float | None = None
    outcome: str = "running"
    reason: str = ""
    partials: int = 0  # partial images a streaming backend has sent so far


class AttemptBoard:
    """Progress notes and attempt events, as rows. Register it as a plugin for `on_attempt`
    and pass `note` as the `progress` callback; `on_change` is called after every update."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[int, int], AttemptRow] = {}
        self._ended = 0  # the number of the last attempt that ended
        self._on_change = on_change

    def note(self, progress: Progress) -> None:
        with self._lock:
            attempt = self._ended + 1
            row = self._rows.setdefault(
                (attempt, progress.task), AttemptRow(attempt, progress.provider)
            )
            row.task = f"{progress.task + 1}/{progress.tasks}"
            row.state = progress.state
            if getattr(progress, "partial_image", None):
                row.partials += 1
            if row.partials and not progress.state.startswith("succ"):
                row.state = f"{progress.state} ({row.partials} partial)"
            row.elapsed_s = progress.elapsed_s
            if progress.replayed:
                row.reason = _REPLAYED
        self._changed()

    @hookimpl
    def on_attempt(self, event: AttemptEvent) -> None:
        with self._lock:
            self._ended = max(self._ended, event.attempt)
            rows = [row for (n, _), row in self._rows.items() if n == event.attempt]
            if not rows:  # refused before any task existed (a 503, a 429, a missing key)
                row = AttemptRow(event.attempt, event.provider, state="not created")
                self._rows[(event.attempt, -1)] = row
                rows = [row]
            for row in rows:
                row.provider = event.provider
                row.model = event.model
                row.outcome = f"{event.outcome} (accepted {event.accepted})"
                if event.elapsed_s is not None and row.elapsed_s is None:
                    row.elapsed_s = event.elapsed_s
                if event.error:
                    reason = event.error
                    if event.error_type and not reason.startswith(event.error_type):
                        reason = f"{event.error_type}: {reason}"
                    row.reason = f"{row.reason}; {reason}" if row.reason else reason
        self._changed()

    def rows(self) -> list[AttemptRow]:
        with self._lock:
            return [self._rows[key] for key in sorted(self._rows)]

    def table(self, title: str, reason_width: int | None = None) -> Table:
        table = fold_table(
            title,
            ("#", "backend", "task", "state", "elapsed", "outcome", "reason"),
            right=("#", "elapsed"),
            widths={"reason": reason_width} if reason_width else None,
        )
        for row in self.rows():
            failed = row.outcome.startswith("failed")
            table.add_row(
                str(row.attempt),
                cell(row.provider, row.model) if row.model else cell(row.provider),
                row.task,
                cell(row.state),
                f"{row.elapsed_s:.1f}s" if row.elapsed_s is not None else "",
                cell(row.outcome),
                cell(row.reason),
                style="red" if failed else None,
            )
        return table

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

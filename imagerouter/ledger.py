"""The write-ahead job ledger: a SQLite file in which nothing paid is ever lost.

Every logical request, every attempt at a backend and every paid create call (a *task*) gets
a row **before** the create is sent (task state `submitting`). The row is then updated with
the provider's task id when the job is accepted, with the outcome and billed cost when it
ends, and with each image saved to disk. A process killed at any point leaves rows that say
what may have been paid for; `uncollected()` lists accepted jobs whose images never reached
disk so `imagerouter resume` can fetch them while their URLs live.

Durability: WAL journal with `synchronous=FULL`, so a write that returned survives a kill or
power loss. Each write is one committed `BEGIN IMMEDIATE` transaction. One connection per
`Ledger`, guarded by a lock, so threads may share a `Ledger`; other `Ledger` objects and other
processes may open the same file (SQLite's locks plus a busy timeout serialize them).

Budget reservations live here too: `reserve` checks every limit and inserts the reservation
in one immediate transaction, which is what makes concurrent requests unable to overshoot.
Schema and states: docs/ledger.md. Read queries: `ledger_reports.py`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import ledger_reports as reports
from .errors import BudgetExceededError
from .ledger_reports import HistoryRow, SpendRow, UncollectedTask, iso, money_text
from .migrations import migrate

__all__ = [
    "FINISHED_TASK_STATES",
    "HistoryRow",
    "Ledger",
    "SpendRow",
    "UncollectedTask",
]

FINISHED_TASK_STATES = frozenset(
    {
        "succeeded",
        "partial_succeeded",
        "failed",
        "canceled",
        "timed_out",
        "unknown",
        "not_sent",
        "collected",
    }
)
_BUSY_TIMEOUT_S = 30.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _json(value: Any) -> str:
    # default=str keeps Decimal, Path and datetime values readable instead of failing.
    return json.dumps(value, sort_keys=True, default=str)


class Ledger:
    """The SQLite ledger at `path` (created, migrated and switched to WAL on open)."""

    def __init__(self, path: Path | str, *, now: Callable[[], datetime] = _utc_now) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._now = now
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,  # autocommit: transactions are explicit BEGIN IMMEDIATE
            check_same_thread=False,
        )
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            _use_wal(self._conn)
            # FULL: a paid record must survive a kill or a power cut, not just a crash.
            self._conn.execute("PRAGMA synchronous = FULL")
            migrate(self._conn, now=self._stamp())
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _stamp(self) -> str:
        return iso(self._now())

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One immediate (write-locked) transaction, committed on success."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _update(self, what: str, key: str, sql: str, params: Sequence[Any]) -> None:
        with self._tx() as conn:
            if conn.execute(sql, params).rowcount != 1:
                raise KeyError(f"no {what} {key!r} in the ledger")

    # --- writes -------------------------------------------------------------------------

    def begin_request(
        self,
        request_id: str,
        *,
        operation: str,
        model: str,
        tier: str | None,
        prompt: str,
        request: Mapping[str, Any],
        output_dir: str,
        quoted_usd: Decimal | None,
    ) -> None:
        """Record a logical request (status `running`). `request` must be secret-free."""
        now = self._stamp()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO requests (id, created_at, updated_at, status, operation, model,"
                " tier, prompt, request_json, output_dir, quoted_usd)"
                " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (request_id, now, now, operation, model, tier, prompt, _json(dict(request)),
                 output_dir, money_text(quoted_usd)),
            )

    def begin_attempt(
        self,
        attempt_id: str,
        *,
        request_id: str,
        attempt_no: int,
        provider: str,
        model: str,
        operation: str,
        quoted_usd: Decimal | None,
        params: Mapping[str, Any],
        accepts_double_charge: bool = False,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO attempts (id, request_id, attempt_no, provider, model, operation,"
                " quoted_usd, params_json, accepts_double_charge, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (attempt_id, request_id, attempt_no, provider, model, operation,
                 money_text(quoted_usd), _json(dict(params)), int(accepts_double_charge),
                 self._stamp()),
            )

    def task_submitting(
        self,
        task_id: str,
        *,
        attempt_id: str,
        request_id: str,
        provider: str,
        model: str,
        operation: str,
        idempotency_key: str,
        num_images: int,
        quoted_usd: Decimal,
    ) -> None:
        """Record a paid create call. Must return before the create is sent."""
        now = self._stamp()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO tasks (id, attempt_id, request_id, provider, model, operation,"
                " idempotency_key, num_images, quoted_usd, state, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'submitting', ?, ?)",
                (task_id, attempt_id, request_id, provider, model, operation, idempotency_key,
                 num_images, money_text(quoted_usd), now, now),
            )

    def task_accepted(
        self,
        task_id: str,
        *,
        provider_task_id: str,
        poll_ref: str,
        replayed: bool = False,
        billed_usd: Decimal | None = None,
    ) -> None:
        """The provider took the job. A state already past `accepted` is kept."""
        now = self._stamp()
        self._update(
            "task", task_id,
            "UPDATE tasks SET provider_task_id = ?, poll_ref = ?, replayed = ?,"
            " billed_usd = COALESCE(?, billed_usd), accepted_at = COALESCE(accepted_at, ?),"
            " updated_at = ?,"
            " state = CASE WHEN state IN ('submitting', 'unknown') THEN 'accepted' ELSE state END"
            " WHERE id = ?",
            (provider_task_id, poll_ref, int(replayed), money_text(billed_usd), now, now,
             task_id),
        )

    def task_finished(
        self,
        task_id: str,
        *,
        state: str,
        billed_usd: Decimal | None = None,
        error: str | None = None,
        image_urls: Sequence[str] = (),
        urls_expire_at: datetime | None = None,
        possibly_billed: bool = False,
    ) -> None:
        """The task's outcome. Values not given keep what an earlier call stored."""
        if state not in FINISHED_TASK_STATES:
            raise ValueError(f"task state must be one of {sorted(FINISHED_TASK_STATES)}")
        now = self._stamp()
        urls = _json(list(image_urls)) if image_urls else None
        self._update(
            "task", task_id,
            "UPDATE tasks SET state = ?, billed_usd = COALESCE(?, billed_usd),"
            " error = COALESCE(?, error), image_urls_json = COALESCE(?, image_urls_json),"
            " urls_expire_at = COALESCE(?, urls_expire_at), possibly_billed = ?,"
            # The first finish is when the job was seen done; later calls (collected after
            # the download, or by resume) keep it, so latencies() measures the job itself.
            " finished_at = COALESCE(finished_at, ?), updated_at = ? WHERE id = ?",
            (state, money_text(billed_usd), error, urls,
             iso(urls_expire_at) if urls_expire_at else None, int(possibly_billed), now, now,
             task_id),
        )

    def image_saved(
        self,
        task_id: str,
        *,
        index: int,
        path: str,
        sha256: str,
        source_url: str,
        width: int,
        height: int,
        format: str,
        size_bytes: int,
        url_expires_at: datetime | None = None,
    ) -> None:
        """One image is on disk. Saving the same index again replaces the record."""
        with self._tx() as conn:
            task = conn.execute("SELECT request_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if task is None:
                raise KeyError(f"no task {task_id!r} in the ledger")
            conn.execute(
                "INSERT OR REPLACE INTO images (task_id, idx, request_id, path, sha256,"
                " source_url, url_expires_at, width, height, format, size_bytes, saved_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, index, task["request_id"], path, sha256, source_url,
                 iso(url_expires_at) if url_expires_at else None, width, height, format,
                 size_bytes, self._stamp()),
            )

    def end_attempt(
        self,
        attempt_id: str,
        *,
        outcome: str,
        accepted: str,
        error_type: str | None = None,
        error: str | None = None,
        billed_usd: Decimal | None = None,
        elapsed_s: float | None = None,
    ) -> None:
        """outcome: served | failed (anything but served/succeeded counts as a failure)."""
        self._update(
            "attempt", attempt_id,
            "UPDATE attempts SET outcome = ?, accepted = ?, error_type = ?, error = ?,"
            " billed_usd = ?, elapsed_s = ?, finished_at = ? WHERE id = ?",
            (outcome, accepted, error_type, error, money_text(billed_usd), elapsed_s,
             self._stamp(), attempt_id),
        )

    def end_request(
        self,
        request_id: str,
        *,
        status: str,
        provider: str | None,
        model: str | None,
        cost_usd: Decimal | None,
        billed_usd: Decimal | None,
        error: str | None = None,
        elapsed_s: float | None = None,
    ) -> None:
        if status not in ("served", "failed"):
            raise ValueError(f"request status must be served or failed, not {status!r}")
        now = self._stamp()
        self._update(
            "request", request_id,
            "UPDATE requests SET status = ?, provider = ?, served_model = ?, cost_usd = ?,"
            " billed_usd = ?, error = ?, elapsed_s = ?, finished_at = ?, updated_at = ?"
            " WHERE id = ?",
            (status, provider, model, money_text(cost_usd), money_text(billed_usd), error,
             elapsed_s, now, now, request_id),
        )

    # --- reads --------------------------------------------------------------------------

    def uncollected(self) -> list[UncollectedTask]:
        with self._lock:
            return reports.uncollected(self._conn)

    def spend(self, *, since: datetime | None = None, by: str | None = None) -> list[SpendRow]:
        with self._lock:
            return reports.spend(self._conn, since=since, by=by)

    def history(self, *, limit: int = 20) -> list[HistoryRow]:
        with self._lock:
            return reports.history(self._conn, limit=limit)

    def request_detail(self, request_id: str) -> dict[str, Any]:
        with self._lock:
            return reports.request_detail(self._conn, request_id)

    def latencies(
        self, provider: str, model: str, operation: str, *, limit: int = 200
    ) -> list[float]:
        with self._lock:
            return reports.latencies(self._conn, provider, model, operation, limit=limit)

    # --- budget reservations ------------------------------------------------------------

    def reserve(
        self,
        reservation_id: str,
        *,
        request_id: str,
        amount: Decimal,
        limits: Sequence[tuple[str, datetime | None, Decimal]],
    ) -> None:
        """Reserve `amount` if it fits every limit, atomically; else BudgetExceededError.

        Each limit is (name, window start or None for all time, limit in USD). Spend counts in
        the window its reservation was made in.
        """
        if amount < 0:
            raise ValueError(f"cannot reserve a negative amount ({amount})")
        with self._tx() as conn:
            for name, start, limit in limits:
                committed = _committed(conn, start)
                if committed + amount > limit:
                    raise BudgetExceededError(
                        f"{name}: {amount:f} USD needed, {committed:f} of {limit:f} already "
                        f"spent or reserved {_period(name, start)}",
                        limit=name,
                        needed_usd=amount,
                    )
            conn.execute(
                "INSERT INTO reservations (id, request_id, amount_usd, state, created_at)"
                " VALUES (?, ?, ?, 'open', ?)",
                (reservation_id, request_id, money_text(amount), self._stamp()),
            )

    def settle(self, reservation_id: str, *, amount: Decimal) -> None:
        """Replace the reservation with the final spend (billed, or quoted when unreported).

        Allowed from any state: a late truth (a job found billed after all) wins.
        """
        if amount < 0:
            raise ValueError(f"cannot settle a negative amount ({amount})")
        self._update(
            "reservation", reservation_id,
            "UPDATE reservations SET state = 'settled', settled_usd = ?, closed_at = ?"
            " WHERE id = ?",
            (money_text(amount), self._stamp(), reservation_id),
        )

    def release(self, reservation_id: str) -> None:
        """Nothing was billed: free the reservation. Releasing twice is a no-op."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT state FROM reservations WHERE id = ?", (reservation_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no reservation {reservation_id!r} in the ledger")
            if row["state"] == "settled":
                raise ValueError(f"reservation {reservation_id!r} is already settled")
            conn.execute(
                "UPDATE reservations SET state = 'released', closed_at = ?"
                " WHERE id = ? AND state = 'open'",
                (self._stamp(), reservation_id),
            )

    def committed_usd(self, since: datetime | None) -> Decimal:
        """Settled spend plus open reservations made since `since` (None: all time)."""
        with self._lock:
            return _committed(self._conn, since)


def _committed(conn: sqlite3.Connection, since: datetime | None) -> Decimal:
    rows = conn.execute(
        "SELECT state, amount_usd, settled_usd FROM reservations"
        " WHERE state IN ('open', 'settled') AND created_at >= ?",
        ("" if since is None else iso(since),),
    )
    total = Decimal(0)
    for state, amount, settled in rows:
        total += Decimal(settled if state == "settled" else amount)
    return total


def _period(name: str, start: datetime | None) -> str:
    if start is None:
        return "in total"
    if name.endswith("daily_usd"):
        return "today"
    if name.endswith("monthly_usd"):
        return "this month"
    return f"since {iso(start)}"


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL (a property of the file, kept across opens).

    The switch needs an exclusive lock; when processes open a new file together it can
    report "locked" without waiting, so retry briefly.
    """
    for attempt in range(100):
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            time.sleep(0.005 * (attempt + 1))
            continue
        if str(mode).lower() == "wal":
            return
        time.sleep(0.005 * (attempt + 1))
    raise sqlite3.OperationalError(f"could not switch {conn!r} to WAL journal mode")

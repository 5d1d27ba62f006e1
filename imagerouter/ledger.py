"""The write-ahead job ledger: a SQLite file in which nothing paid is ever lost.

Every logical request, every attempt at a backend and every paid create call (a *task*) gets
a row **before** the create is sent (task state `submitting`). The row is then updated with
the provider's task id when the job is accepted, with the outcome and billed cost when it
ends, and with each image saved to disk. A process killed at any point leaves rows that say
what may have been paid for; `uncollected()` lists accepted jobs whose images never reached
disk so `imagerouter resume` can fetch them while their URLs live.

Durability: WAL journal with `synchronous=FULL`, so a write that returned survives a kill or
power loss. Each write is a savepoint of a committed `BEGIN IMMEDIATE` transaction; writes
from threads arriving together share one transaction and one fsync (group commit,
`ledger_commit.py`), and each returns only once its transaction is committed. One connection per
`Ledger`, guarded by a lock, so threads may share a `Ledger`; other `Ledger` objects and other
processes may open the same file (SQLite's locks plus a busy timeout serialize them).

Code on the event loop uses the async API, `await ledger.aio.<method>(...)` (the same methods,
run on one writer thread that commits each queue of waiting calls in one transaction:
`imagerouter/stores/aio.py`). The same class is the PostgreSQL ledger with another connection
(`imagerouter/stores/postgres.py`, chosen by `ledger.url`): methods must read through
`reading()` and write through `_tx()`/`transaction()`, never `self._conn` directly, and keep
their SQL portable (docs/ledger.md, "Backends").

Budget reservations live here too: `reserve` checks every limit and inserts the reservation
in one immediate transaction, which is what makes concurrent requests unable to overshoot.
Schema and states: docs/ledger.md. Read queries: `ledger_reports.py`; the reads recovery
uses: `ledger_recovery.py`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import ledger_recovery as recovery
from . import ledger_reports as reports
from .errors import BudgetExceededError
from .ledger_commit import GroupCommit
from .ledger_owners import OwnerRegistry
from .ledger_recovery import OpenRequest, RequestOwner, UnknownTask
from .ledger_reports import (
    HistoryRow,
    SpendRow,
    UncollectedTask,
    iso,
    money_text,
    parse_money,
)
from .migrations import migrate

if TYPE_CHECKING:
    from .stores.aio import AsyncLedger

__all__ = [
    "FINISHED_TASK_STATES",
    "HistoryRow",
    "Ledger",
    "OpenRequest",
    "PaidTask",
    "RequestStatus",
    "SpendRow",
    "TaskRecordState",
    "UncollectedTask",
    "UnknownTask",
]


class RequestStatus(StrEnum):
    """A logical request's status in the ledger."""

    RUNNING = "running"
    SERVED = "served"
    FAILED = "failed"
    # Stopped before it finished (Ctrl-C, cancellation, or its process died): its accepted
    # tasks may still be running at the provider, and `resume` collects them.
    INTERRUPTED = "interrupted"


class TaskRecordState(StrEnum):
    """A paid task's state in the ledger (the provider's job states, plus our own)."""

    SUBMITTING = "submitting"  # written before the create is sent
    ACCEPTED = "accepted"  # the provider answered with its task id
    SUCCEEDED = "succeeded"
    PARTIAL = "partial_succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"  # still running at the poll deadline; resume collects it
    # The create got no answer and nothing settled whether the task exists: possibly billed,
    # and reconciled by the provider's own means until it is found or proven absent.
    UNKNOWN = "unknown"
    NOT_SENT = "not_sent"  # proven never created
    COLLECTED = "collected"  # every image on disk

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
# Task states whose cost is not spent (nothing billed), whatever else the row says.
_UNBILLED_STATES = ("failed", "canceled", "not_sent")


@dataclass(frozen=True)
class PaidTask:
    """A task whose cost counts, as an interruption report names it: accepted (with the
    provider's task id) or `unknown` (provider_task_id "")."""

    task_id: str
    provider: str
    provider_task_id: str
    quoted_usd: Decimal
    state: str


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _json(value: Any) -> str:
    # default=str keeps Decimal, Path and datetime values readable instead of failing.
    return json.dumps(value, sort_keys=True, default=str)


class Ledger:
    """The SQLite ledger at `path` (created, migrated and switched to WAL on open)."""

    def __init__(self, path: Path | str, *, now: Callable[[], datetime] = _utc_now) -> None:
        self.path = Path(path).expanduser()
        self._now = now
        self._lock = threading.RLock()
        self._conn = self._connect()
        self._writes = GroupCommit(self._conn, self._lock)
        self._aio: AsyncLedger | None = None
        self._aio_lock = threading.Lock()
        # This process's owner row and heartbeat, started by the first request written.
        self.owners = OwnerRegistry(self)

    def _connect(self) -> sqlite3.Connection:
        """The one connection, configured and migrated (PgLedger opens PostgreSQL instead)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,  # autocommit: transactions are explicit BEGIN IMMEDIATE
            check_same_thread=False,
        )
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            _use_wal(conn)
            # FULL: a paid record must survive a kill or a power cut, not just a crash.
            conn.execute("PRAGMA synchronous = FULL")
            migrate(conn, now=self._stamp())
        except BaseException:
            conn.close()
            raise
        return conn

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    @property
    def aio(self) -> AsyncLedger:
        """The async API of this ledger (imagerouter.stores): every call is queued to one
        writer thread and batched with the others waiting, one COMMIT for all of them."""
        if self._aio is None:
            from .stores.aio import AsyncLedger

            with self._aio_lock:  # not the connection's lock: a COMMIT may be holding that
                if self._aio is None:
                    self._aio = AsyncLedger(self)
        return self._aio

    def close(self) -> None:
        if self._aio is not None:
            self._aio.close()  # drains the writer's queue first
        self.owners.close()
        with self._lock:
            self._writes.flush()
            self._conn.close()

    def _stamp(self) -> str:
        return iso(self._now())

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write, all or nothing, durable when the block has returned (its transaction
        may carry other threads' writes too: see ledger_commit.py)."""
        with self._writes.write() as conn:
            yield conn

    # Modules that keep a table of their own here (idempotency.py) write and read through
    # these two, so their writes share the ledger's transactions, locks and durability.
    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write as `_tx` makes it: all or nothing, in one immediate transaction."""
        return self._tx()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads only, while no other thread uses it."""
        with self._lock:
            yield self._conn

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
        owner_pid: int | None = None,
        key_name: str | None = None,
        mcp_client: str | None = None,
    ) -> None:
        """Record a logical request (status `running`). `request` must be secret-free.
        `owner_pid` (default: this process) lets `resume` tell a live request from a dead one.
        `key_name`: the gateway key's configured name (never the key) it was made with.
        `mcp_client`: the MCP client's name when it came through `imagerouter mcp`."""
        now = self._stamp()
        with self._tx() as conn:
            # An owner id only for this process: an explicit `owner_pid` is someone else's.
            owner_id = self.owners.register(conn) if owner_pid is None else None
            conn.execute(
                "INSERT INTO requests (id, created_at, updated_at, status, operation, model,"
                " tier, prompt, request_json, output_dir, quoted_usd, owner_pid, key_name,"
                " mcp_client, owner_id)"
                " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, now, now, operation, model, tier, prompt, _json(dict(request)),
                 output_dir, money_text(quoted_usd),
                 os.getpid() if owner_pid is None else owner_pid, key_name, mcp_client,
                 owner_id),
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
        spec: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a paid create call. Must return before the create is sent. `spec` is the
        create as sent (secret-free), kept so a lost create can be reconciled later."""
        now = self._stamp()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO tasks (id, attempt_id, request_id, provider, model, operation,"
                " idempotency_key, num_images, quoted_usd, state, created_at, updated_at,"
                " spec_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'submitting', ?, ?, ?)",
                (task_id, attempt_id, request_id, provider, model, operation, idempotency_key,
                 num_images, money_text(quoted_usd), now, now,
                 None if spec is None else _json(dict(spec))),
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
        if status not in (RequestStatus.SERVED, RequestStatus.FAILED, RequestStatus.INTERRUPTED):
            raise ValueError(
                f"request status must be served, failed or interrupted, not {status!r}"
            )
        now = self._stamp()
        self._update(
            "request", request_id,
            "UPDATE requests SET status = ?, provider = ?, served_model = ?, cost_usd = ?,"
            " billed_usd = ?, error = ?, elapsed_s = ?, finished_at = ?, updated_at = ?"
            " WHERE id = ?",
            (status, provider, model, money_text(cost_usd), money_text(billed_usd), error,
             elapsed_s, now, now, request_id),
        )

    def image_moved(self, task_id: str, *, index: int, path: str) -> None:
        """An image saved under a provisional name was renamed to its place in the request's
        numbering (1..n in order)."""
        self._update(
            "image", f"{task_id}#{index}",
            "UPDATE images SET path = ? WHERE task_id = ? AND idx = ?", (path, task_id, index),
        )

    def task_checked(self, task_id: str, *, error: str | None = None) -> None:
        """A reconciliation look-up of an unknown task answered nothing conclusive."""
        now = self._stamp()
        self._update(
            "task", task_id,
            "UPDATE tasks SET checks = checks + 1, checked_at = ?, error = COALESCE(?, error),"
            " updated_at = ? WHERE id = ?",
            (now, error, now, task_id),
        )

    def interrupt_request(
        self, request_id: str, *, error: str, elapsed_s: float | None = None
    ) -> list[PaidTask]:
        """The request stopped before it finished (Ctrl-C, a cancelled job, a dead process).

        Tasks whose create was under way become `unknown` (possibly billed, reconciled
        later); the request is recorded `interrupted` with the cost of its accepted tasks.
        Returns the accepted tasks whose images are not all on disk (paid, and for all we
        know still running at the provider: `resume` collects them), then the unknown ones
        (state `unknown`, no provider task id: `resume` looks them up).
        """
        now = self._stamp()
        with self._tx() as conn:
            conn.execute(
                "UPDATE tasks SET state = 'unknown', possibly_billed = 1,"
                " error = COALESCE(error, 'interrupted while the create was being sent'),"
                " updated_at = ? WHERE request_id = ? AND state = 'submitting'",
                (now, request_id),
            )
            rows = conn.execute(
                "SELECT t.*, (SELECT COUNT(*) FROM images i WHERE i.task_id = t.id) AS saved"
                " FROM tasks t WHERE t.request_id = ? ORDER BY t.created_at, t.rowid",
                (request_id,),
            ).fetchall()
            accepted = [
                row for row in rows
                if row["provider_task_id"] is not None and row["state"] not in _UNBILLED_STATES
            ]
            cost = sum((_task_cost(row) for row in accepted), start=Decimal(0))
            billed = [parse_money(row["billed_usd"]) for row in accepted]
            billed_total = (
                sum((b for b in billed if b is not None), start=Decimal(0))
                if any(b is not None for b in billed)
                else None
            )
            changed = conn.execute(
                "UPDATE requests SET status = 'interrupted', cost_usd = ?, billed_usd = ?,"
                " error = ?, elapsed_s = COALESCE(?, elapsed_s),"
                " finished_at = COALESCE(finished_at, ?), updated_at = ? WHERE id = ?",
                (money_text(cost), money_text(billed_total), error, elapsed_s, now, now,
                 request_id),
            ).rowcount
            if changed != 1:
                raise KeyError(f"no request {request_id!r} in the ledger")
        still_out = [
            row for row in accepted
            if row["state"] != "collected" and row["saved"] < row["num_images"]
        ]
        unknown = [
            row for row in rows if row["provider_task_id"] is None and row["state"] == "unknown"
        ]
        return [
            PaidTask(
                task_id=row["id"],
                provider=row["provider"],
                provider_task_id=row["provider_task_id"] or "",
                quoted_usd=Decimal(row["quoted_usd"]),
                state=row["state"],
            )
            for row in (*still_out, *unknown)
        ]

    def close_request(self, request_id: str, *, error: str) -> None:
        """Close a request whose process died while it ran: `interrupted`, with the cost of
        every task that counts as spent (accepted, or possibly billed)."""
        now = self._stamp()
        with self._tx() as conn:
            rows = conn.execute("SELECT * FROM tasks WHERE request_id = ?", (request_id,))
            cost = sum((_task_cost(row) for row in rows), start=Decimal(0))
            self_changed = conn.execute(
                "UPDATE requests SET status = 'interrupted', cost_usd = ?,"
                " error = COALESCE(error, ?), finished_at = COALESCE(finished_at, ?),"
                " updated_at = ? WHERE id = ? AND status = 'running'",
                (money_text(cost), error, now, now, request_id),
            ).rowcount
            if self_changed != 1:
                raise KeyError(f"no running request {request_id!r} in the ledger")

    def settle_reservations(self, request_id: str, *, resettle: bool = False) -> int:
        """Settle (or release) a request's open reservations from what its tasks cost: an
        attempt's reservation gets that attempt's spend; one made before its attempt was
        recorded (a kill in between) gets whatever the others do not cover. With `resettle`,
        settled ones are recomputed too (a late truth, e.g. an unknown task found absent).
        Returns how many changed."""
        now = self._stamp()
        changed = 0
        with self._tx() as conn:
            reservations = conn.execute(
                "SELECT * FROM reservations WHERE request_id = ? ORDER BY created_at, rowid",
                (request_id,),
            ).fetchall()
            tasks = conn.execute(
                "SELECT * FROM tasks WHERE request_id = ?", (request_id,)
            ).fetchall()
            by_attempt: dict[str, Decimal] = {}
            for task in tasks:
                by_attempt[task["attempt_id"]] = by_attempt.get(
                    task["attempt_id"], Decimal(0)
                ) + _task_cost(task)
            linked = {r["attempt_id"] for r in reservations if r["attempt_id"] is not None}
            unlinked = sum(
                (cost for attempt, cost in by_attempt.items() if attempt not in linked),
                start=Decimal(0),
            )
            for r in reservations:
                if r["state"] == "released" or (r["state"] == "settled" and not resettle):
                    continue
                if r["attempt_id"] is not None:
                    amount = by_attempt.get(r["attempt_id"], Decimal(0))
                else:
                    amount, unlinked = unlinked, Decimal(0)
                if r["state"] == "open" and amount == 0:
                    conn.execute(
                        "UPDATE reservations SET state = 'released', closed_at = ? WHERE id = ?",
                        (now, r["id"]),
                    )
                    changed += 1
                elif r["state"] == "open" or parse_money(r["settled_usd"]) != amount:
                    conn.execute(
                        "UPDATE reservations SET state = 'settled', settled_usd = ?,"
                        " closed_at = ? WHERE id = ?",
                        (money_text(amount), now, r["id"]),
                    )
                    changed += 1
        return changed

    # --- reads --------------------------------------------------------------------------

    def unknown_tasks(
        self, *, provider: str | None = None, limit: int | None = None
    ) -> list[UnknownTask]:
        with self.reading() as conn:
            return recovery.unknown_tasks(conn, provider=provider, limit=limit)

    def open_requests(self) -> list[OpenRequest]:
        with self.reading() as conn:
            return recovery.open_requests(conn)

    def orphan_reservations(self) -> list[str]:
        with self.reading() as conn:
            return recovery.orphan_reservations(conn)

    def request_owners(self, request_ids: Sequence[str]) -> dict[str, RequestOwner]:
        with self.reading() as conn:
            return recovery.request_owners(conn, request_ids)

    def watching(self) -> dict[str, int]:
        """Per request, how many of its paid tasks are still being reconciled or collected
        (`resume`, the gateway's sweeper, or a later request to the same backend)."""
        counts: dict[str, int] = {}
        for task in self.uncollected():
            counts[task.request_id] = counts.get(task.request_id, 0) + 1
        for unknown in self.unknown_tasks():
            if unknown.state == "unknown":
                counts[unknown.request_id] = counts.get(unknown.request_id, 0) + 1
        return counts

    def uncollected(self) -> list[UncollectedTask]:
        with self.reading() as conn:
            return reports.uncollected(conn)

    def spend(self, *, since: datetime | None = None, by: str | None = None) -> list[SpendRow]:
        with self.reading() as conn:
            return reports.spend(conn, since=since, by=by)

    def history(self, *, limit: int = 20) -> list[HistoryRow]:
        with self.reading() as conn:
            return reports.history(conn, limit=limit)

    def request_detail(self, request_id: str) -> dict[str, Any]:
        with self.reading() as conn:
            return reports.request_detail(conn, request_id)

    def latencies(
        self, provider: str, model: str, operation: str, *, limit: int = 200
    ) -> list[float]:
        with self.reading() as conn:
            return reports.latencies(conn, provider, model, operation, limit=limit)

    # --- budget reservations ------------------------------------------------------------

    def reserve(
        self,
        reservation_id: str,
        *,
        request_id: str,
        amount: Decimal,
        limits: Sequence[tuple[str, datetime | None, Decimal]],
        attempt_id: str | None = None,
        scopes: Sequence[str] = (),
        scoped_limits: Sequence[tuple[str, str, datetime | None, Decimal]] = (),
    ) -> None:
        """Reserve `amount` if it fits every limit, atomically; else BudgetExceededError.

        Each limit is (name, window start or None for all time, limit in USD). Spend counts in
        the window its reservation was made in. `scopes` (budget.BudgetScope labels) are
        recorded with the reservation; each scoped limit (scope, name, start, limit) counts
        only that scope's reservations.
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
            for scope, name, start, limit in scoped_limits:
                committed = _committed(conn, start, scope)
                if committed + amount > limit:
                    raise BudgetExceededError(
                        f"{name}: {amount:f} USD needed, {committed:f} of {limit:f} already "
                        f"spent or reserved {_period(name, start)}",
                        limit=name,
                        needed_usd=amount,
                        scope=scope,
                    )
            stamp = self._stamp()
            conn.execute(
                "INSERT INTO reservations (id, request_id, amount_usd, state, created_at,"
                " attempt_id) VALUES (?, ?, ?, 'open', ?, ?)",
                (reservation_id, request_id, money_text(amount), stamp, attempt_id),
            )
            for scope in dict.fromkeys(scopes):
                conn.execute(
                    "INSERT INTO reservation_scopes (reservation_id, scope) VALUES (?, ?)",
                    (reservation_id, scope),
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

    def committed_usd(self, since: datetime | None, *, scope: str | None = None) -> Decimal:
        """Settled spend plus open reservations made since `since` (None: all time); with
        `scope`, only the reservations recorded under that budget scope."""
        with self.reading() as conn:
            return _committed(conn, since, scope)


def _task_cost(row: sqlite3.Row) -> Decimal:
    """What a task counts as spent: billed when reported, else quoted, unless it is known
    unbilled (failed, canceled, never sent). A possibly-billed task counts."""
    if row["state"] in _UNBILLED_STATES and not row["possibly_billed"]:
        return Decimal(0)
    if row["provider_task_id"] is None and row["state"] not in ("submitting", "unknown"):
        return Decimal(0)
    billed = parse_money(row["billed_usd"])
    return billed if billed is not None else Decimal(row["quoted_usd"])


def _committed(
    conn: sqlite3.Connection, since: datetime | None, scope: str | None = None
) -> Decimal:
    low = "" if since is None else iso(since)
    if scope is None:
        rows = conn.execute(
            "SELECT state, amount_usd, settled_usd FROM reservations"
            " WHERE state IN ('open', 'settled') AND created_at >= ?",
            (low,),
        )
    else:
        rows = conn.execute(
            "SELECT r.state, r.amount_usd, r.settled_usd FROM reservation_scopes s"
            " JOIN reservations r ON r.id = s.reservation_id"
            " WHERE s.scope = ? AND r.state IN ('open', 'settled') AND r.created_at >= ?",
            (scope, low),
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

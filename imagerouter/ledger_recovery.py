"""Ledger reads for recovery: what may have been paid for and is not settled yet.

`resume`, the gateway's sweeper and the next request to a backend use these to find tasks
whose create may have reached the provider without our learning its id, requests a dead
process left open, and reservations nothing was ever sent for. Each function takes the
ledger's connection; `Ledger` holds its lock around the call (as for `ledger_reports`).
Rows that name a request's owner come with its owner row and the ledger's clock, read in the
same query (`ledger_owners.owner_seen`), which is what `owner_alive` decides from.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from .ledger_owners import OWNER_COLUMNS, OwnerSeen, clock_sql, owner_seen
from .ledger_reports import output_format_of, parse_iso

__all__ = [
    "OpenRequest",
    "RequestOwner",
    "UnknownTask",
    "open_requests",
    "orphan_reservations",
    "request_owners",
    "unknown_tasks",
]


@dataclass(frozen=True)
class UnknownTask:
    """A task whose create may have reached the provider but whose provider id we lack."""

    task_id: str
    request_id: str
    attempt_id: str
    provider: str
    model: str
    operation: str
    idempotency_key: str
    num_images: int
    quoted_usd: Decimal
    state: str
    spec: Mapping[str, Any] | None  # the create as sent (None: recorded before m003)
    output_dir: str
    output_format: str
    request_status: str
    owner_pid: int | None
    created_at: datetime
    checks: int
    checked_at: datetime | None
    owner: OwnerSeen | None = None  # the request's owner row (None: written before m008)


@dataclass(frozen=True)
class OpenRequest:
    """A request not yet closed (`running`), or closed without every task settled."""

    request_id: str
    status: str
    owner_pid: int | None
    num_images: int
    saved_images: int
    owner: OwnerSeen | None = None


# (status, owner pid, owner row) of a request: `owner_alive(*owner)` says if it still runs.
RequestOwner = tuple[str, int | None, OwnerSeen | None]


def unknown_tasks(
    conn: sqlite3.Connection, *, provider: str | None = None, limit: int | None = None
) -> list[UnknownTask]:
    """Tasks whose create may have reached the provider without us learning its id
    (`unknown`, or `submitting` left by a dead process), least recently checked first."""
    sql = (
        "SELECT t.*, r.output_dir, r.request_json, r.status AS request_status,"  # noqa: S608 - constants only
        f" r.owner_pid, r.owner_id, {OWNER_COLUMNS}, {clock_sql(conn)} AS ledger_now"
        " FROM tasks t JOIN requests r ON r.id = t.request_id"
        " LEFT JOIN owners o ON o.id = r.owner_id"
        " WHERE t.provider_task_id IS NULL AND t.state IN ('unknown', 'submitting')"
    )
    params: list[Any] = []
    if provider is not None:
        sql += " AND t.provider = ?"
        params.append(provider)
    sql += " ORDER BY COALESCE(t.checked_at, ''), t.created_at, t.rowid"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(max(0, limit))
    return [
        UnknownTask(
            task_id=row["id"],
            request_id=row["request_id"],
            attempt_id=row["attempt_id"],
            provider=row["provider"],
            model=row["model"],
            operation=row["operation"],
            idempotency_key=row["idempotency_key"],
            num_images=row["num_images"],
            quoted_usd=Decimal(row["quoted_usd"]),
            state=row["state"],
            spec=json.loads(row["spec_json"]) if row["spec_json"] else None,
            output_dir=row["output_dir"],
            output_format=output_format_of(row),
            request_status=row["request_status"],
            owner_pid=row["owner_pid"],
            created_at=datetime.fromisoformat(row["created_at"]),
            checks=row["checks"],
            checked_at=parse_iso(row["checked_at"]),
            owner=owner_seen(row),
        )
        for row in conn.execute(sql, params).fetchall()
    ]


def open_requests(conn: sqlite3.Connection) -> list[OpenRequest]:
    """Requests still `running`, or interrupted ones with a reservation still open."""
    rows = conn.execute(
        "SELECT r.id, r.status, r.owner_pid, r.owner_id, r.request_json,"  # noqa: S608 - constants only
        f" {OWNER_COLUMNS}, {clock_sql(conn)} AS ledger_now,"
        " (SELECT COUNT(*) FROM images i WHERE i.request_id = r.id) AS saved"
        " FROM requests r LEFT JOIN owners o ON o.id = r.owner_id"
        " WHERE r.status = 'running' OR EXISTS (SELECT 1 FROM"
        " reservations v WHERE v.request_id = r.id AND v.state = 'open')"
        " ORDER BY r.created_at, r.rowid"
    ).fetchall()
    found = []
    for row in rows:
        request = json.loads(row["request_json"])
        n = request.get("n", 1) if isinstance(request, dict) else 1
        found.append(
            OpenRequest(
                request_id=row["id"],
                status=row["status"],
                owner_pid=row["owner_pid"],
                num_images=int(n) if isinstance(n, int) else 1,
                saved_images=row["saved"],
                owner=owner_seen(row),
            )
        )
    return found


def orphan_reservations(conn: sqlite3.Connection) -> list[str]:
    """Request ids of open reservations whose request was never recorded (a kill between
    the reservation and the request row): nothing was sent for them."""
    rows = conn.execute(
        "SELECT DISTINCT v.request_id FROM reservations v WHERE v.state = 'open'"
        " AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.id = v.request_id)"
    ).fetchall()
    return [str(row[0]) for row in rows]


def request_owners(
    conn: sqlite3.Connection, request_ids: Sequence[str]
) -> dict[str, RequestOwner]:
    """(status, owner pid, owner row) of each of these requests."""
    owners: dict[str, RequestOwner] = {}
    sql = (
        f"SELECT r.status, r.owner_pid, r.owner_id, {OWNER_COLUMNS},"  # noqa: S608 - constants only
        f" {clock_sql(conn)} AS ledger_now FROM requests r"
        " LEFT JOIN owners o ON o.id = r.owner_id WHERE r.id = ?"
    )
    for request_id in set(request_ids):
        row = conn.execute(sql, (request_id,)).fetchone()
        if row is not None:
            owners[request_id] = (row["status"], row["owner_pid"], owner_seen(row))
    return owners

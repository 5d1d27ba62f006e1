"""Read-side queries over the ledger: resume candidates, spend, history, latencies.

Split from `ledger.py` so the write path stays short. Every function takes an open
`sqlite3.Connection` (rows as `sqlite3.Row`); `Ledger` calls them under its lock. Money is
summed in Python with `Decimal` because SQLite's SUM would go through floats. This module also
holds the text codecs the ledger stores values with.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "ATTEMPT_OK_OUTCOMES",
    "CHARGED_STATES",
    "SPEND_GROUPINGS",
    "HistoryRow",
    "SpendRow",
    "UncollectedTask",
    "history",
    "iso",
    "latencies",
    "money_text",
    "parse_iso",
    "parse_money",
    "request_detail",
    "spend",
    "uncollected",
]

SPEND_GROUPINGS = ("provider", "model", "tier", "day", "key")  # key: gateway key name
# Attempt outcomes that are not failures (the router writes served | partial | failed;
# partial delivered images, so it counts as working).
ATTEMPT_OK_OUTCOMES = frozenset({"served", "partial", "succeeded", "partial_succeeded"})
# States after which a task has nothing left to collect.
_CLOSED_STATES = ("failed", "canceled", "not_sent", "collected")
# Task states whose quoted cost counts as spent even without a provider task id: the create
# may have reached the provider (a crash mid-submit leaves `submitting`).
CHARGED_STATES = frozenset({"submitting", "unknown"})
_NOT_CHARGED_STATES = frozenset({"failed", "canceled", "not_sent"})
_MISSING = "-"


# --- codecs -------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    """UTC ISO-8601 text of one fixed width, so comparing text compares time. Naive = UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def money_text(amount: Decimal | None) -> str | None:
    """Exact decimal text; floats are refused because they are not exact."""
    if amount is None:
        return None
    if not isinstance(amount, Decimal):
        if isinstance(amount, float | bool):
            raise TypeError(f"money must be Decimal, not {type(amount).__name__}")
        amount = Decimal(amount)
    if not amount.is_finite():
        raise ValueError(f"{amount} is not an amount")
    return format(amount, "f")


def parse_money(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def output_format_of(row: sqlite3.Row) -> str:
    """The output format a request row asked for (png when it named none)."""
    request = json.loads(row["request_json"])
    fmt = request.get("output_format") if isinstance(request, dict) else None
    return str(fmt or "png")


def _since_text(since: datetime | None) -> str:
    # Every stored timestamp sorts after "", so no lower bound is just "".
    return "" if since is None else iso(since)


# --- uncollected (what `imagerouter resume` works through) ------------------------------


@dataclass(frozen=True)
class UncollectedTask:
    """An accepted task whose images did not all reach disk."""

    task_id: str
    request_id: str
    provider: str
    model: str
    operation: str
    provider_task_id: str
    poll_ref: str | None
    num_images: int
    saved_indexes: tuple[int, ...]
    output_dir: str
    output_format: str
    state: str
    image_urls: tuple[str, ...]
    urls_expire_at: datetime | None
    created_at: datetime
    # The request's `size` and `size_policy` (None when it named none): resume fits the
    # images to WxH under the `exact` policy, as the first run would have (issue 12).
    requested_size: str | None = None
    size_policy: str | None = None


def uncollected(conn: sqlite3.Connection) -> list[UncollectedTask]:
    """Tasks with a provider task id, not closed, with fewer saved images than expected.

    Expected is `num_images`, except for a finished success that reported its URLs: then it
    is the number of URLs (a partial success never delivers the rest).
    """
    marks = ",".join("?" * len(_CLOSED_STATES))
    rows = conn.execute(
        f"""
        SELECT t.*, r.output_dir, r.request_json,
               (SELECT group_concat(i.idx) FROM images i WHERE i.task_id = t.id) AS saved
        FROM tasks t JOIN requests r ON r.id = t.request_id
        WHERE t.provider_task_id IS NOT NULL AND t.state NOT IN ({marks})
        ORDER BY t.created_at, t.rowid
        """,  # noqa: S608 - only placeholders are interpolated
        _CLOSED_STATES,
    ).fetchall()
    found = []
    for row in rows:
        saved = tuple(sorted(int(i) for i in row["saved"].split(","))) if row["saved"] else ()
        urls = tuple(json.loads(row["image_urls_json"]))
        expected = row["num_images"]
        if urls and row["state"] in ("succeeded", "partial_succeeded"):
            expected = len(urls)
        if len(saved) >= expected:
            continue
        found.append(
            UncollectedTask(
                task_id=row["id"],
                request_id=row["request_id"],
                provider=row["provider"],
                model=row["model"],
                operation=row["operation"],
                provider_task_id=row["provider_task_id"],
                poll_ref=row["poll_ref"],
                num_images=row["num_images"],
                saved_indexes=saved,
                output_dir=row["output_dir"],
                output_format=output_format_of(row),
                state=row["state"],
                image_urls=urls,
                urls_expire_at=parse_iso(row["urls_expire_at"]),
                created_at=datetime.fromisoformat(row["created_at"]),
                requested_size=_request_text(row, "size"),
                size_policy=_request_text(row, "size_policy"),
            )
        )
    return found


def _request_text(row: sqlite3.Row, name: str) -> str | None:
    request = json.loads(row["request_json"])
    value = request.get(name) if isinstance(request, dict) else None
    return value if isinstance(value, str) else None


# --- spend ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpendRow:
    """Spend and reliability for one group (or for everything, key "total")."""

    key: str
    requests: int
    served: int
    failed: int
    interrupted: int  # Ctrl-C or a killed process: paid tasks may still be collected
    attempts: int
    finished_attempts: int  # attempts with an outcome; still-running ones are not rated
    failed_attempts: int
    failure_rate: float  # failed_attempts / finished_attempts (of attempts, not requests)
    images: int
    quoted_usd: Decimal
    billed_usd: Decimal | None
    drift_usd: Decimal
    drift_flagged: bool
    p50_latency_s: float | None
    mean_latency_s: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: money as decimal strings."""
        return {
            "key": self.key,
            "requests": self.requests,
            "served": self.served,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "attempts": self.attempts,
            "finished_attempts": self.finished_attempts,
            "failed_attempts": self.failed_attempts,
            "failure_rate": self.failure_rate,
            "images": self.images,
            "quoted_usd": money_text(self.quoted_usd),
            "billed_usd": money_text(self.billed_usd),
            "drift_usd": money_text(self.drift_usd),
            "drift_flagged": self.drift_flagged,
            "p50_latency_s": self.p50_latency_s,
            "mean_latency_s": self.mean_latency_s,
        }


@dataclass
class _Group:
    requests: int = 0
    served: int = 0
    failed: int = 0
    interrupted: int = 0
    attempts: int = 0
    finished_attempts: int = 0
    failed_attempts: int = 0
    images: int = 0
    quoted: Decimal = Decimal(0)
    billed: Decimal | None = None
    drift: Decimal = Decimal(0)
    drift_flagged: bool = False
    elapsed: list[float] = field(default_factory=list)

    def row(self, key: str) -> SpendRow:
        finished = self.finished_attempts
        return SpendRow(
            key=key,
            requests=self.requests,
            served=self.served,
            failed=self.failed,
            interrupted=self.interrupted,
            attempts=self.attempts,
            finished_attempts=finished,
            failed_attempts=self.failed_attempts,
            failure_rate=self.failed_attempts / finished if finished else 0.0,
            images=self.images,
            quoted_usd=self.quoted,
            billed_usd=self.billed,
            drift_usd=self.drift,
            drift_flagged=self.drift_flagged,
            p50_latency_s=statistics.median(self.elapsed) if self.elapsed else None,
            mean_latency_s=statistics.fmean(self.elapsed) if self.elapsed else None,
        )


def _charged(row: sqlite3.Row) -> bool:
    """Whether a task's cost counts as spent: accepted and not failed, or possibly billed."""
    billed = parse_money(row["billed_usd"])
    if (billed is not None and billed > 0) or row["possibly_billed"]:
        return True
    if row["state"] in CHARGED_STATES:
        return True
    return row["provider_task_id"] is not None and row["state"] not in _NOT_CHARGED_STATES


def spend(
    conn: sqlite3.Connection, *, since: datetime | None = None, by: str | None = None
) -> list[SpendRow]:
    """Spend, counts, failure rate and latency, per group, for requests created since `since`.

    Request counts and latency group by the request (its serving provider and model); attempts,
    images and money group by the provider and model that did the work, so a failed-over
    request charges each backend what it actually cost. `tier` and `day` come from the request.
    """
    if by is not None and by not in SPEND_GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(SPEND_GROUPINGS)}, not {by!r}")
    low = _since_text(since)

    def key(provider: str | None, model: str | None, tier: str | None, created: str,
            key_name: str | None = None) -> str:
        if by is None:
            return "total"
        value = {"provider": provider, "model": model, "tier": tier, "day": created[:10],
                 "key": key_name}[by]
        return value or _MISSING

    groups: dict[str, _Group] = defaultdict(_Group)
    if by is None:
        groups["total"] = _Group()
    for r in conn.execute(
        "SELECT status, provider, COALESCE(served_model, model) AS model, tier, created_at,"
        " elapsed_s, key_name FROM requests WHERE created_at >= ?",
        (low,),
    ):
        g = groups[key(r["provider"], r["model"], r["tier"], r["created_at"], r["key_name"])]
        g.requests += 1
        g.served += r["status"] == "served"
        g.failed += r["status"] == "failed"
        g.interrupted += r["status"] == "interrupted"
        if r["elapsed_s"] is not None:
            g.elapsed.append(float(r["elapsed_s"]))
    for a in _joined(conn, "attempts", "a.provider, a.model, a.outcome", low):
        g = groups[key(a["provider"], a["model"], a["tier"], a["created_at"], a["key_name"])]
        g.attempts += 1
        if a["outcome"] is not None:
            g.finished_attempts += 1
            g.failed_attempts += a["outcome"] not in ATTEMPT_OK_OUTCOMES
    task_columns = (
        "a.provider, a.model, a.state, a.provider_task_id, a.possibly_billed, a.quoted_usd,"
        " a.billed_usd, (SELECT COUNT(*) FROM images i WHERE i.task_id = a.id) AS saved"
    )
    for t in _joined(conn, "tasks", task_columns, low):
        g = groups[key(t["provider"], t["model"], t["tier"], t["created_at"], t["key_name"])]
        g.images += t["saved"]
        if not _charged(t):
            continue
        quoted = Decimal(t["quoted_usd"])
        g.quoted += quoted
        billed = parse_money(t["billed_usd"])
        if billed is not None:
            g.billed = (g.billed or Decimal(0)) + billed
            g.drift += billed - quoted
            g.drift_flagged = g.drift_flagged or billed != quoted
    return [groups[k].row(k) for k in sorted(groups)]


def _joined(
    conn: sqlite3.Connection, table: str, columns: str, low: str
) -> Iterable[sqlite3.Row]:
    # `table` and `columns` are literals from this module, never user input.
    return conn.execute(
        f"SELECT {columns}, r.tier, r.created_at, r.key_name FROM {table} a"  # noqa: S608
        " JOIN requests r ON r.id = a.request_id WHERE r.created_at >= ?",
        (low,),
    )


# --- history and detail ---------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRow:
    """One logical request, as `imagerouter history` lists it."""

    request_id: str
    created_at: datetime
    status: str
    operation: str
    provider: str | None
    model: str
    tier: str | None
    cost_usd: Decimal | None
    billed_usd: Decimal | None
    images: int
    attempts: int
    prompt: str
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "created_at": iso(self.created_at),
            "status": self.status,
            "operation": self.operation,
            "provider": self.provider,
            "model": self.model,
            "tier": self.tier,
            "cost_usd": money_text(self.cost_usd),
            "billed_usd": money_text(self.billed_usd),
            "images": self.images,
            "attempts": self.attempts,
            "prompt": self.prompt,
            "error": self.error,
        }


def history(conn: sqlite3.Connection, *, limit: int = 20) -> list[HistoryRow]:
    """The newest requests first. Provider is the server, or the last backend tried."""
    rows = conn.execute(
        """
        SELECT r.*,
            COALESCE(r.provider, (SELECT a.provider FROM attempts a WHERE a.request_id = r.id
                                  ORDER BY a.attempt_no DESC LIMIT 1)) AS shown_provider,
            (SELECT COUNT(*) FROM images i WHERE i.request_id = r.id) AS image_count,
            (SELECT COUNT(*) FROM attempts a WHERE a.request_id = r.id) AS attempt_count
        FROM requests r ORDER BY r.created_at DESC, r.rowid DESC LIMIT ?
        """,
        (max(0, limit),),
    ).fetchall()
    return [
        HistoryRow(
            request_id=r["id"],
            created_at=datetime.fromisoformat(r["created_at"]),
            status=r["status"],
            operation=r["operation"],
            provider=r["shown_provider"],
            model=r["served_model"] or r["model"],
            tier=r["tier"],
            cost_usd=parse_money(r["cost_usd"]),
            billed_usd=parse_money(r["billed_usd"]),
            images=r["image_count"],
            attempts=r["attempt_count"],
            prompt=r["prompt"][:80],
            error=r["error"],
        )
        for r in rows
    ]


def request_detail(conn: sqlite3.Connection, request_id: str) -> dict[str, Any]:
    """Everything stored for one request, as stored (money and times as text), JSON parsed."""
    row = conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        raise KeyError(f"no request {request_id!r} in the ledger")
    request = dict(row)
    request["request"] = json.loads(request.pop("request_json"))
    attempts = []
    for a in conn.execute(
        "SELECT * FROM attempts WHERE request_id = ? ORDER BY attempt_no, rowid", (request_id,)
    ):
        attempt = dict(a)
        attempt["params"] = json.loads(attempt.pop("params_json"))
        attempt["accepts_double_charge"] = bool(attempt["accepts_double_charge"])
        attempts.append(attempt)
    tasks = []
    for t in conn.execute(
        "SELECT * FROM tasks WHERE request_id = ? ORDER BY created_at, rowid", (request_id,)
    ):
        task = dict(t)
        task["image_urls"] = json.loads(task.pop("image_urls_json"))
        task["replayed"] = bool(task["replayed"])
        task["possibly_billed"] = bool(task["possibly_billed"])
        tasks.append(task)
    images = [
        dict(i)
        for i in conn.execute(
            "SELECT * FROM images WHERE request_id = ? ORDER BY saved_at, task_id, idx",
            (request_id,),
        )
    ]
    return {"request": request, "attempts": attempts, "tasks": tasks, "images": images}


def latencies(
    conn: sqlite3.Connection, provider: str, model: str, operation: str, *, limit: int = 200
) -> list[float]:
    """Seconds from accepted to finished for tasks that delivered, newest first.

    `collected` counts: the router records a task collected once its images are saved. A task
    collected later by `resume` shows the time until the resume, a conservative outlier.
    """
    rows = conn.execute(
        """
        SELECT accepted_at, finished_at FROM tasks
        WHERE provider = ? AND model = ? AND operation = ?
          AND state IN ('succeeded', 'partial_succeeded', 'collected')
          AND accepted_at IS NOT NULL AND finished_at IS NOT NULL
        ORDER BY finished_at DESC, rowid DESC LIMIT ?
        """,
        (provider, model, operation, max(0, limit)),
    )
    return [
        (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
        for start, end in rows
    ]


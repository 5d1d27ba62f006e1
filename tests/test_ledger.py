"""The write-ahead ledger: migrations, the paid-job lifecycle, resume candidates, reports."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

import imagerouter.migrations as migrations
from imagerouter.ledger import Ledger
from imagerouter.paths import HOME_ENV, default_ledger_path, imagerouter_home

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
D = Decimal


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "ledger.db"


@pytest.fixture
def ledger(db: Path, clock: Clock) -> Ledger:
    return Ledger(db, now=clock)


def start_request(
    ledger: Ledger,
    rid: str,
    *,
    model: str = "gpt-image-2",
    tier: str | None = "standard",
    request: dict[str, object] | None = None,
) -> None:
    ledger.begin_request(
        rid,
        operation="generate",
        model=model,
        tier=tier,
        prompt=f"prompt of {rid} " * 10,
        request=request or {"prompt": "x", "n": 1},
        output_dir="/tmp/out",
        quoted_usd=D("0.04"),
    )


def submit_task(
    ledger: Ledger,
    rid: str,
    *,
    provider: str = "runapi",
    model: str = "gpt-image-2",
    attempt_no: int = 1,
    num_images: int = 1,
    quoted: str = "0.04",
) -> tuple[str, str]:
    aid = f"{rid}-a{attempt_no}"
    tid = f"{aid}-t"
    ledger.begin_attempt(
        aid, request_id=rid, attempt_no=attempt_no, provider=provider, model=model,
        operation="generate", quoted_usd=D(quoted), params={"size": "1024x1024"},
    )
    ledger.task_submitting(
        tid, attempt_id=aid, request_id=rid, provider=provider, model=model,
        operation="generate", idempotency_key=f"idem-{tid}", num_images=num_images,
        quoted_usd=D(quoted),
    )
    return aid, tid


def save(ledger: Ledger, tid: str, index: int) -> None:
    ledger.image_saved(
        tid, index=index, path=f"/tmp/out/{tid}-{index}.png", sha256="ab" * 32,
        source_url=f"https://cdn.example/{tid}/{index}.png", width=1024, height=1024,
        format="png", size_bytes=1234,
    )


# --- paths ---------------------------------------------------------------------------------


def test_home_comes_from_the_environment_and_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    assert imagerouter_home() == tmp_path / "home"
    assert (tmp_path / "home").is_dir()
    assert default_ledger_path() == tmp_path / "home" / "ledger.db"


def test_home_falls_back_to_the_platform_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HOME_ENV, raising=False)
    asked = []

    def fake_user_data_dir(name: str) -> str:
        asked.append(name)
        return str(tmp_path / "data" / name)

    monkeypatch.setattr("platformdirs.user_data_dir", fake_user_data_dir)
    assert imagerouter_home() == tmp_path / "data" / "imagerouter"
    assert asked == ["imagerouter"]
    assert (tmp_path / "data" / "imagerouter").is_dir()


# --- migrations ----------------------------------------------------------------------------


def applied(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid").fetchall()


def test_migrations_run_once_in_order_and_reopening_is_a_no_op(db: Path, clock: Clock) -> None:
    Ledger(db, now=clock).close()
    first = applied(db)
    assert [name for name, _ in first] == [m.__name__ for m in migrations.MIGRATIONS]
    assert all(at.startswith("2025-03-10T12:00:00") for _, at in first)
    clock.advance(3600)
    Ledger(db, now=clock).close()
    assert applied(db) == first  # nothing re-applied, nothing re-stamped
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_new_migration_applies_on_next_open_and_a_failing_one_rolls_back(
    db: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    Ledger(db, now=clock).close()
    steps = list(migrations.MIGRATIONS)

    def m900_add_notes(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE requests ADD COLUMN notes TEXT")

    def m901_broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*steps, m900_add_notes, m901_broken])
    with pytest.raises(RuntimeError, match="boom"):
        Ledger(db, now=clock)
    names = [name for name, _ in applied(db)]
    assert names[-1] == "m900_add_notes"
    assert "m901_broken" not in names
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        columns = {r[1] for r in conn.execute("PRAGMA table_info(requests)")}
    assert "half_done" not in tables
    assert "notes" in columns


def test_duplicate_migration_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "MIGRATIONS", list(migrations.MIGRATIONS))

    def m001_initial(conn: sqlite3.Connection) -> None:
        raise AssertionError("never runs")

    with pytest.raises(ValueError, match="duplicate"):
        migrations.migration(m001_initial)


# --- the write-ahead lifecycle -------------------------------------------------------------


def test_paid_task_is_on_disk_before_the_create_and_through_each_step(
    db: Path, ledger: Ledger, clock: Clock
) -> None:
    start_request(ledger, "r1")
    aid, tid = submit_task(ledger, "r1", num_images=2)

    # What a kill right now would leave: another connection (another process) sees the row.
    other = Ledger(db, now=clock)
    [task] = other.request_detail("r1")["tasks"]
    assert task["state"] == "submitting"
    assert task["provider_task_id"] is None
    assert task["idempotency_key"] == f"idem-{tid}"
    assert task["quoted_usd"] == "0.04"
    assert other.uncollected() == []  # no provider task id yet: nothing to poll

    clock.advance(1)
    ledger.task_accepted(tid, provider_task_id="prov-1", poll_ref="prov-1")
    [pending] = other.uncollected()
    assert (pending.state, pending.provider_task_id, pending.saved_indexes) == (
        "accepted", "prov-1", ())

    clock.advance(30)
    expires = T0 + timedelta(hours=24)
    urls = ["https://cdn.example/0.png", "https://cdn.example/1.png"]
    ledger.task_finished(tid, state="succeeded", billed_usd=D("0.08"), image_urls=urls,
                         urls_expire_at=expires)
    save(ledger, tid, 0)
    [half] = other.uncollected()
    assert half.saved_indexes == (0,)
    assert half.image_urls == tuple(urls)
    assert half.urls_expire_at == expires
    save(ledger, tid, 1)
    assert other.uncollected() == []

    ledger.end_attempt(aid, outcome="served", accepted="yes", billed_usd=D("0.08"),
                       elapsed_s=31.0)
    ledger.end_request("r1", status="served", provider="runapi", model="gpt-image-2",
                       cost_usd=D("0.08"), billed_usd=D("0.08"), elapsed_s=31.0)
    detail = other.request_detail("r1")
    assert detail["request"]["status"] == "served"
    assert detail["attempts"][0]["outcome"] == "served"
    [done] = detail["tasks"]
    assert (done["state"], done["billed_usd"], done["image_urls"]) == ("succeeded", "0.08", urls)
    assert done["accepted_at"] < done["finished_at"]
    assert [i["idx"] for i in detail["images"]] == [0, 1]
    assert other.latencies("runapi", "gpt-image-2", "generate") == [30.0]
    other.close()


def test_uncollected_keeps_open_tasks_and_skips_closed_ones(ledger: Ledger) -> None:
    start_request(ledger, "r1", request={"output_format": "webp"})
    cases = {}
    for n, (final, saved) in enumerate([
        (None, 0),                  # accepted, process died mid-poll
        ("succeeded", 0),           # URLs known, never saved
        ("timed_out", 0),           # may still finish at the provider
        ("failed", 0),              # nothing to fetch
        ("canceled", 0),
        ("collected", 0),           # resume already dealt with it
        ("succeeded", 1),           # everything saved
    ]):
        _, tid = submit_task(ledger, "r1", attempt_no=n + 1)
        ledger.task_accepted(tid, provider_task_id=f"p{n}", poll_ref=f"ref{n}")
        if final:
            ledger.task_finished(tid, state=final, image_urls=[f"https://x/{n}"])
        for i in range(saved):
            save(ledger, tid, i)
        cases[tid] = final
    _, never_sent = submit_task(ledger, "r1", attempt_no=99)
    ledger.task_finished(never_sent, state="not_sent")

    found = ledger.uncollected()
    assert [t.provider_task_id for t in found] == ["p0", "p1", "p2"]
    assert {t.output_format for t in found} == {"webp"}
    assert found[0].poll_ref == "ref0"
    assert found[0].output_dir == "/tmp/out"


def test_partial_success_expects_only_the_images_it_reported(ledger: Ledger) -> None:
    start_request(ledger, "r1")
    _, tid = submit_task(ledger, "r1", num_images=4)
    ledger.task_accepted(tid, provider_task_id="p", poll_ref="p")
    ledger.task_finished(tid, state="partial_succeeded", image_urls=["u0", "u1"])
    save(ledger, tid, 0)
    assert [t.saved_indexes for t in ledger.uncollected()] == [(0,)]
    save(ledger, tid, 1)
    assert ledger.uncollected() == []


def test_updates_to_unknown_rows_and_bad_states_are_refused(ledger: Ledger) -> None:
    with pytest.raises(KeyError):
        ledger.task_accepted("nope", provider_task_id="p", poll_ref="p")
    with pytest.raises(KeyError):
        ledger.end_request("nope", status="served", provider=None, model=None,
                           cost_usd=None, billed_usd=None)
    with pytest.raises(KeyError):
        save(ledger, "nope", 0)
    start_request(ledger, "r1")
    _, tid = submit_task(ledger, "r1")
    with pytest.raises(ValueError, match="task state"):
        ledger.task_finished(tid, state="done")
    with pytest.raises(sqlite3.IntegrityError):  # attempts need their request
        submit_task(ledger, "missing-request")
    with pytest.raises(TypeError):
        ledger.task_finished(tid, state="succeeded", billed_usd=0.1)  # type: ignore[arg-type]


def test_money_is_stored_exactly(ledger: Ledger, db: Path) -> None:
    start_request(ledger, "r1")
    _, tid = submit_task(ledger, "r1", quoted="0.0075")
    ledger.task_accepted(tid, provider_task_id="p", poll_ref="p", billed_usd=D("0.00750"))
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT quoted_usd, billed_usd, typeof(quoted_usd) FROM tasks"
        ).fetchone()
    assert row == ("0.0075", "0.00750", "text")


# --- no secret -----------------------------------------------------------------------------


def test_schema_has_no_place_for_credentials_and_stores_the_request_verbatim(
    ledger: Ledger, db: Path
) -> None:
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        columns = {
            f"{t}.{c[1]}" for t in tables for c in conn.execute(f"PRAGMA table_info({t})")
        }
    suspicious = {
        c for c in columns
        if re.search(r"api_?key|secret|token|auth|header|password|bearer|cookie", c)
    }
    # The idempotency key is a client-generated replay token, not a credential.
    assert suspicious == set()
    assert "tasks.idempotency_key" in columns

    summary = {"prompt": "a fox", "n": 2, "size": "1024x1536", "inputs": ["sha256:abcd"],
               "max_cost_usd": "0.50"}
    start_request(ledger, "r1", request=summary)
    assert ledger.request_detail("r1")["request"]["request"] == summary
    with sqlite3.connect(db) as conn:
        [stored] = conn.execute("SELECT request_json FROM requests").fetchone()
    assert json.loads(stored) == summary


# --- reports -------------------------------------------------------------------------------


def finished_request(
    ledger: Ledger, clock: Clock, rid: str, *, provider: str, model: str, tier: str,
    quoted: str, billed: str | None, elapsed: float, fail_first_on: str | None = None,
) -> None:
    start_request(ledger, rid, model=model, tier=tier)
    attempt_no = 1
    if fail_first_on:
        aid, tid = submit_task(ledger, rid, provider=fail_first_on, model=model, quoted=quoted)
        ledger.task_finished(tid, state="not_sent", error="connect failed")
        ledger.end_attempt(aid, outcome="failed", accepted="no", error_type="ConnectionFailedError")
        attempt_no = 2
    aid, tid = submit_task(ledger, rid, provider=provider, model=model, quoted=quoted,
                           attempt_no=attempt_no)
    ledger.task_accepted(tid, provider_task_id=f"p-{rid}", poll_ref="x")
    clock.advance(elapsed)
    ledger.task_finished(tid, state="succeeded", billed_usd=D(billed) if billed else None)
    save(ledger, tid, 0)
    ledger.end_attempt(aid, outcome="served", accepted="yes")
    ledger.end_request(rid, status="served", provider=provider, model=model,
                       cost_usd=D(billed or quoted), billed_usd=D(billed) if billed else None,
                       elapsed_s=elapsed)


@pytest.fixture
def busy_ledger(ledger: Ledger, clock: Clock) -> Ledger:
    clock.current = T0 - timedelta(days=10)  # an old request, outside --since 7d
    finished_request(ledger, clock, "old", provider="runapi", model="gpt-image-2",
                     tier="standard", quoted="1.00", billed="1.00", elapsed=5)
    clock.current = T0
    finished_request(ledger, clock, "a", provider="runapi", model="gpt-image-2",
                     tier="standard", quoted="0.04", billed="0.04", elapsed=10)
    finished_request(ledger, clock, "b", provider="runflow", model="gpt-image-2",
                     tier="standard", quoted="0.05", billed="0.06", elapsed=20,
                     fail_first_on="runapi")
    clock.current = T0 + timedelta(days=1)
    finished_request(ledger, clock, "c", provider="runflow", model="gpt-image-1.5",
                     tier="cheap", quoted="0.02", billed=None, elapsed=40)
    # A failed request: accepted, then the job failed (not billed), and one that may be billed.
    start_request(ledger, "d", model="gpt-image-2", tier="cheap")
    aid, tid = submit_task(ledger, "d", provider="runapi", quoted="0.04")
    ledger.task_accepted(tid, provider_task_id="p-d", poll_ref="x")
    ledger.task_finished(tid, state="failed", error="content policy")
    ledger.end_attempt(aid, outcome="failed", accepted="yes", error_type="JobFailedError")
    aid, tid = submit_task(ledger, "d", provider="runflow", quoted="0.05", attempt_no=2)
    ledger.task_finished(tid, state="unknown", possibly_billed=True, error="read timeout")
    ledger.end_attempt(aid, outcome="failed", accepted="unknown")
    ledger.end_request("d", status="failed", provider=None, model=None, cost_usd=None,
                       billed_usd=None, error="all backends failed", elapsed_s=60)
    return ledger


def test_spend_total_counts_money_failures_and_latency(busy_ledger: Ledger) -> None:
    [total] = busy_ledger.spend(since=T0 - timedelta(days=7))
    assert total.key == "total"
    assert (total.requests, total.served, total.failed) == (4, 3, 1)
    assert (total.attempts, total.failed_attempts) == (6, 3)
    assert total.failure_rate == pytest.approx(0.5)
    assert total.images == 3
    # Quoted: a, b (runflow), c, and d's possibly billed runflow task; not the failed or
    # not-sent ones. Billed: only what providers reported.
    assert total.quoted_usd == D("0.16")
    assert total.billed_usd == D("0.10")
    assert total.drift_usd == D("0.01")
    assert total.drift_flagged
    assert total.p50_latency_s == pytest.approx(30.0)
    assert total.mean_latency_s == pytest.approx(32.5)

    [everything] = busy_ledger.spend()
    assert everything.requests == 5
    assert everything.quoted_usd == D("1.16")


def test_spend_by_provider_charges_the_backend_that_did_the_work(busy_ledger: Ledger) -> None:
    rows = {r.key: r for r in busy_ledger.spend(since=T0 - timedelta(days=7), by="provider")}
    assert set(rows) == {"-", "runapi", "runflow"}
    runapi, runflow = rows["runapi"], rows["runflow"]
    assert (runapi.requests, runapi.attempts, runapi.failed_attempts) == (1, 3, 2)
    assert runapi.quoted_usd == D("0.04") and runapi.billed_usd == D("0.04")
    assert not runapi.drift_flagged and runapi.drift_usd == 0
    assert (runflow.requests, runflow.attempts, runflow.failed_attempts) == (2, 3, 1)
    assert runflow.quoted_usd == D("0.12")
    assert runflow.billed_usd == D("0.06")
    assert runflow.drift_usd == D("0.01") and runflow.drift_flagged
    assert rows["-"].failed == 1 and rows["-"].attempts == 0


def test_spend_by_model_tier_and_day(busy_ledger: Ledger) -> None:
    since = T0 - timedelta(days=7)
    by_model = {r.key: r for r in busy_ledger.spend(since=since, by="model")}
    assert by_model["gpt-image-1.5"].quoted_usd == D("0.02")
    assert by_model["gpt-image-1.5"].billed_usd is None  # nobody reported a billed cost
    assert by_model["gpt-image-2"].requests == 3
    by_tier = {r.key: r for r in busy_ledger.spend(since=since, by="tier")}
    assert (by_tier["standard"].requests, by_tier["cheap"].requests) == (2, 2)
    assert by_tier["cheap"].failure_rate == pytest.approx(2 / 3)
    by_day = busy_ledger.spend(since=since, by="day")
    assert [(r.key, r.requests) for r in by_day] == [("2025-03-10", 2), ("2025-03-11", 2)]
    assert by_day[0].as_dict()["quoted_usd"] == "0.09"
    with pytest.raises(ValueError, match="by must be"):
        busy_ledger.spend(by="colour")


def test_empty_ledger_reports_a_zero_total(ledger: Ledger) -> None:
    [total] = ledger.spend()
    assert (total.requests, total.quoted_usd, total.billed_usd, total.failure_rate) == (
        0, D(0), None, 0.0)
    assert total.p50_latency_s is None
    assert ledger.spend(by="provider") == []


def test_history_lists_newest_first_with_a_limit(busy_ledger: Ledger) -> None:
    rows = busy_ledger.history(limit=3)
    assert [r.request_id for r in rows] == ["d", "c", "b"]
    d, c, b = rows
    assert (d.status, d.provider, d.error, d.attempts, d.images) == (
        "failed", "runflow", "all backends failed", 2, 0)
    assert (b.provider, b.attempts, b.images, b.billed_usd) == ("runflow", 2, 1, D("0.06"))
    assert c.cost_usd == D("0.02") and c.tier == "cheap" and c.model == "gpt-image-1.5"
    assert len(b.prompt) == 80
    assert b.as_dict()["created_at"] == "2025-03-10T12:00:10.000000+00:00"
    assert len(busy_ledger.history()) == 5


def test_latencies_are_newest_first_and_only_for_successes(
    ledger: Ledger, clock: Clock
) -> None:
    for n, seconds in enumerate([12, 30, 7]):
        finished_request(ledger, clock, f"r{n}", provider="runapi", model="gpt-image-2",
                         tier="standard", quoted="0.04", billed="0.04", elapsed=seconds)
    start_request(ledger, "collected")  # how the router closes a task whose images it saved
    _, tid = submit_task(ledger, "collected")
    ledger.task_accepted(tid, provider_task_id="p-c", poll_ref="p-c")
    clock.advance(9)
    ledger.task_finished(tid, state="collected")
    start_request(ledger, "failed")
    _, tid = submit_task(ledger, "failed")
    ledger.task_accepted(tid, provider_task_id="p-f", poll_ref="p-f")
    clock.advance(3)
    ledger.task_finished(tid, state="failed")
    assert ledger.latencies("runapi", "gpt-image-2", "generate") == [9.0, 7.0, 30.0, 12.0]
    assert ledger.latencies("runapi", "gpt-image-2", "generate", limit=1) == [9.0]
    assert ledger.latencies("runflow", "gpt-image-2", "generate") == []


def test_a_partial_attempt_is_not_a_failure(ledger: Ledger) -> None:
    start_request(ledger, "r1")
    aid, _ = submit_task(ledger, "r1")
    ledger.end_attempt(aid, outcome="partial", accepted="yes", error_type="JobFailedError")
    aid2, _ = submit_task(ledger, "r1", attempt_no=2)
    ledger.end_attempt(aid2, outcome="failed", accepted="no")
    submit_task(ledger, "r1", attempt_no=3)  # still running: not in the failure rate
    [total] = ledger.spend()
    assert (total.attempts, total.failed_attempts, total.failure_rate) == (3, 1, 0.5)


# --- recovery: interruptions, closing, settling ---------------------------------------------


def test_interrupting_a_request_records_its_accepted_cost_and_unknown_creates(
    ledger: Ledger,
) -> None:
    start_request(ledger, "r1", request={"prompt": "x", "n": 2})
    _, accepted = submit_task(ledger, "r1", quoted="0.06")
    ledger.task_accepted(accepted, provider_task_id="pt-1", poll_ref="p/pt-1")
    ledger.task_submitting(  # a second create was being sent when the request stopped
        "r1-a1-t2", attempt_id="r1-a1", request_id="r1", provider="runapi",
        model="gpt-image-2", operation="generate", idempotency_key="idem-2", num_images=1,
        quoted_usd=D("0.06"),
    )
    paid = ledger.interrupt_request("r1", error="interrupted", elapsed_s=1.5)
    assert [(p.task_id, p.provider_task_id, p.state) for p in paid] == [
        (accepted, "pt-1", "accepted"),
        ("r1-a1-t2", "", "unknown"),
    ]
    detail = ledger.request_detail("r1")
    assert detail["request"]["status"] == "interrupted"
    assert detail["request"]["cost_usd"] == "0.06"  # the accepted task only
    unknown = next(t for t in detail["tasks"] if t["id"] == "r1-a1-t2")
    assert unknown["state"] == "unknown" and unknown["possibly_billed"]
    assert [t.task_id for t in ledger.unknown_tasks()] == ["r1-a1-t2"]
    assert ledger.watching() == {"r1": 2}


def test_settle_reservations_charges_each_attempt_what_its_tasks_cost(ledger: Ledger) -> None:
    start_request(ledger, "r1")
    ledger.reserve("rsv-1", request_id="r1", amount=D("0.06"), limits=[], attempt_id="r1-a1")
    _, t1 = submit_task(ledger, "r1", quoted="0.06")
    ledger.task_accepted(t1, provider_task_id="pt-1", poll_ref="p/pt-1")
    ledger.reserve("rsv-2", request_id="r1", amount=D("0.06"), limits=[], attempt_id="r1-a2")
    _, t2 = submit_task(ledger, "r1", attempt_no=2, quoted="0.06")
    ledger.task_finished(t2, state="not_sent")
    # Reserved by a killed process before its attempt row existed: nothing was sent for it.
    ledger.reserve("rsv-3", request_id="r1", amount=D("0.06"), limits=[])
    assert ledger.settle_reservations("r1") == 3
    with sqlite3.connect(ledger.path) as conn:
        rows = conn.execute("SELECT id, state, settled_usd FROM reservations").fetchall()
    states = {row[0]: (row[1], row[2]) for row in rows}
    assert states == {
        "rsv-1": ("settled", "0.06"),
        "rsv-2": ("released", None),
        "rsv-3": ("released", None),
    }
    assert ledger.committed_usd(None) == D("0.06")
    # A late truth: the accepted task was billed less.
    ledger.task_finished(t1, state="collected", billed_usd=D("0.05"))
    assert ledger.settle_reservations("r1") == 0  # settled ones stay without `resettle`
    assert ledger.settle_reservations("r1", resettle=True) == 1
    assert ledger.committed_usd(None) == D("0.05")


def test_open_requests_and_closing_a_dead_one(ledger: Ledger) -> None:
    start_request(ledger, "r1")
    _, t1 = submit_task(ledger, "r1", quoted="0.06")
    ledger.task_accepted(t1, provider_task_id="pt-1", poll_ref="p/pt-1")
    [open_request] = ledger.open_requests()
    assert (open_request.request_id, open_request.status) == ("r1", "running")
    ledger.close_request("r1", error="the process stopped")
    row = ledger.request_detail("r1")["request"]
    assert (row["status"], row["cost_usd"]) == ("interrupted", "0.06")
    assert ledger.open_requests() == []
    with pytest.raises(KeyError):
        ledger.close_request("r1", error="twice")  # only running requests are closed

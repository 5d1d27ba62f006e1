"""A request's owner is judged by its owner row, not by a PID that means nothing on another
host: the pure rule case by case, the PID probe on real processes, and `resume` and
idempotency on SQLite and PostgreSQL leaving a live replica's work alone and collecting a dead
one's. The heartbeat is driven by a short interval and an Event, never by a timed assertion."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from imagerouter import Router
from imagerouter.emulated import Emulators
from imagerouter.errors import ProviderError
from imagerouter.idempotency import IdempotencyKey, IdempotencyStore
from imagerouter.ledger import Ledger
from imagerouter.ledger_owners import (
    OWNER_TTL_S,
    Liveness,
    OwnerSeen,
    ProcessIdentity,
    clock_sql,
    owner_alive,
    probe_process,
    this_process,
)
from imagerouter.stores import open_ledger

from .conftest import MakeRouter
from .test_stores_ledger import pg_url, request_kwargs  # noqa: F401 - pg_url: a fresh schema

LINUX = Path("/proc/self/stat").exists()

HERE = ProcessIdentity(
    owner_id="me", host="a", host_key="boot-a/pid:[1]", pid=100, start_token="500",
    started_at="2026-01-01T00:00:00+00:00",
)


def seen(**changes: Any) -> OwnerSeen:
    """An owner row on another host, seen 1 s before it was read."""
    base = OwnerSeen(owner_id="other", host="b", host_key="boot-b/pid:[1]", pid=200,
                     start_token="900", seen_at=1000.0, read_at=1001.0)
    return replace(base, **changes)


def never(pid: int, start_token: str | None) -> Liveness:
    raise AssertionError(f"pid {pid} of another host must not be probed here")


def probe_says(answer: Liveness) -> Any:
    def probe(pid: int, start_token: str | None) -> Liveness:
        return answer

    return probe


# -- the rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["served", "failed", "interrupted"])
def test_only_a_running_request_has_a_live_owner(status: str) -> None:
    assert not owner_alive(status, HERE.pid, seen(owner_id="me"), here=HERE, probe=never)


def test_a_row_of_this_process_is_alive_however_old_its_heartbeat() -> None:
    assert owner_alive("running", 100, seen(owner_id="me", read_at=10_000.0), here=HERE,
                       probe=never)


def test_another_host_is_alive_while_its_heartbeat_is_fresh_and_dead_once_it_lapses() -> None:
    fresh = seen(seen_at=1000.0, read_at=1000.0 + OWNER_TTL_S)
    assert owner_alive("running", 200, fresh, here=HERE, probe=never)
    lapsed = seen(seen_at=1000.0, read_at=1000.0 + OWNER_TTL_S + 0.001)
    assert not owner_alive("running", 200, lapsed, here=HERE, probe=never)
    # The clock is injectable, and so is the TTL.
    assert not owner_alive("running", 200, seen(), here=HERE, probe=never, now=1031.0)
    assert owner_alive("running", 200, seen(), here=HERE, probe=never, now=1031.0, ttl_s=60)
    assert not owner_alive("running", 200, seen(), here=HERE, probe=never, ttl_s=0.5)


def test_another_host_with_this_process_pid_is_judged_by_its_heartbeat_not_the_pid() -> None:
    # PID 100 is this process here, and means nothing on host b.
    assert owner_alive("running", 100, seen(pid=100), here=HERE, probe=never)
    assert not owner_alive("running", 100, seen(pid=100, read_at=5000.0), here=HERE,
                           probe=never)


def test_same_host_a_pid_that_is_gone_or_reused_is_dead_even_with_a_fresh_heartbeat() -> None:
    row = seen(host_key=HERE.host_key)
    assert not owner_alive("running", 200, row, here=HERE, probe=probe_says(Liveness.DEAD))


def test_same_host_the_pid_with_its_start_token_is_alive_even_with_a_lapsed_heartbeat() -> None:
    row = seen(host_key=HERE.host_key, read_at=9999.0)
    asked: list[tuple[int, str | None]] = []

    def probe(pid: int, start_token: str | None) -> Liveness:
        asked.append((pid, start_token))
        return Liveness.ALIVE

    assert owner_alive("running", 200, row, here=HERE, probe=probe)
    assert asked == [(200, "900")]  # the owner row's pid and start token, not owner_pid


def test_same_host_unsure_pid_falls_back_to_the_heartbeat() -> None:
    unsure = probe_says(Liveness.UNSURE)
    assert owner_alive("running", 200, seen(host_key=HERE.host_key), here=HERE, probe=unsure)
    assert not owner_alive(
        "running", 200, seen(host_key=HERE.host_key, read_at=2000.0), here=HERE, probe=unsure
    )


def test_old_rows_without_an_owner_id_fall_back_to_the_pid_rule() -> None:
    assert not owner_alive("running", None, None, here=HERE, probe=never)
    assert owner_alive("running", HERE.pid, None, here=HERE, probe=never)
    assert not owner_alive("running", 7, None, here=HERE, probe=probe_says(Liveness.DEAD))
    assert owner_alive("running", 7, None, here=HERE, probe=probe_says(Liveness.UNSURE))
    assert owner_alive("running", 7, None, here=HERE, probe=probe_says(Liveness.ALIVE))


# -- this process and the PID probe, on real processes -------------------------------------


def test_this_process_has_a_random_id_a_host_key_and_a_new_identity_in_another_process() -> None:
    me = this_process()
    assert me is this_process() and me.pid == os.getpid()
    assert len(me.owner_id) == 32 and me.host and me.host_key
    code = (
        "from imagerouter.ledger_owners import this_process as t;"
        " p = t(); print(p.owner_id, p.host_key)"
    )
    other_id, other_key = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert other_id != me.owner_id
    assert other_key == me.host_key  # one machine, one PID namespace


@pytest.mark.skipif(not LINUX, reason="start tokens come from /proc")
def test_probe_tells_a_live_process_from_a_reused_pid_a_zombie_and_a_gone_one() -> None:
    me = this_process()
    assert me.start_token is not None
    assert probe_process(me.pid, me.start_token) is Liveness.ALIVE
    assert probe_process(me.pid, "1") is Liveness.DEAD  # the PID now names another process
    assert probe_process(me.pid, None) is Liveness.UNSURE
    assert probe_process(0, None) is Liveness.DEAD  # never a process group
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.kill()
        # Killed, not yet reaped: a zombie runs nothing. Wait for the kernel to say so.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert probe_process(child.pid, None) is Liveness.DEAD
    finally:
        child.wait()
    assert probe_process(child.pid, None) is Liveness.DEAD  # reaped: gone


# -- the heartbeat -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("pg_url"))


def _seen_at(ledger: Ledger, owner_id: str) -> float:
    with ledger.reading() as conn:
        row = conn.execute("SELECT seen_at FROM owners WHERE id = ?", (owner_id,)).fetchone()
    return float(row[0])


def test_the_heartbeat_renews_the_owner_row_and_stops_with_the_ledger(url: str) -> None:
    beats = 0
    beat = threading.Condition()

    def on_beat() -> None:
        nonlocal beats
        with beat:
            beats += 1
            beat.notify_all()

    def wait_for(count: int) -> None:
        with beat:
            assert beat.wait_for(lambda: beats >= count, timeout=30), beats

    ledger = open_ledger(url)
    try:
        ledger.owners.heartbeat_s = 0.02
        ledger.owners.on_beat = on_beat
        ledger.begin_request("r1", **request_kwargs())
        me = this_process()
        with ledger.reading() as conn:
            row = conn.execute(
                "SELECT owner_id, owner_pid FROM requests WHERE id = 'r1'"
            ).fetchone()
        assert (row[0], row[1]) == (me.owner_id, me.pid)
        wait_for(1)
        with ledger.transaction() as conn:
            conn.execute(
                f"UPDATE owners SET seen_at = {clock_sql(conn)} - 3600 WHERE id = ?",
                (me.owner_id,),
            )
        stale = _seen_at(ledger, me.owner_id)
        with beat:
            after = beats
        wait_for(after + 2)  # the second beat from now began after the UPDATE committed
        assert _seen_at(ledger, me.owner_id) > stale + 3000
        heartbeat = ledger.owners.heartbeat
        assert heartbeat is not None and heartbeat.running
    finally:
        ledger.close()
    assert not heartbeat.running


def test_a_ledger_only_read_writes_no_owner_row_and_starts_no_heartbeat(url: str) -> None:
    with open_ledger(url) as ledger:
        ledger.spend()
        ledger.history()
        ledger.uncollected()
        assert ledger.owners.heartbeat is None
        with ledger.reading() as conn:
            assert conn.execute("SELECT COUNT(*) FROM owners").fetchone()[0] == 0


# -- resume on both backends ---------------------------------------------------------------


def _foreign_owner(
    ledger: Ledger, request_id: str, *, age_s: float = 0.0, host_key: str = "boot-b/pid:[1]",
    pid: int | None = None, start_token: str | None = "123",
) -> str:
    """Hand `request_id` (back to `running`) to an owner row of another process: by default
    one on another host whose heartbeat is `age_s` old by the ledger's clock."""
    owner_id = uuid.uuid4().hex
    pid = os.getpid() if pid is None else pid  # the same pid as ours: it must not matter
    with ledger.transaction() as conn:
        conn.execute(
            "INSERT INTO owners (id, host, host_key, pid, proc_start, started_at, seen_at)"
            f" VALUES (?, ?, ?, ?, ?, ?, {clock_sql(conn)} - ?)",
            (owner_id, "replica-b", host_key, pid, start_token, "2026-01-01T00:00:00+00:00",
             age_s),
        )
        conn.execute(
            "UPDATE requests SET status = 'running', finished_at = NULL, owner_id = ?,"
            " owner_pid = ? WHERE id = ?",
            (owner_id, pid, request_id),
        )
    return owner_id


def _lapse(ledger: Ledger, owner_id: str) -> None:
    with ledger.transaction() as conn:
        conn.execute("UPDATE owners SET seen_at = seen_at - 3600 WHERE id = ?", (owner_id,))


def _uncollect(router: Router, request_id: str) -> None:
    """Make a served request's task one accepted whose images never reached disk."""
    assert router.ledger is not None
    with router.ledger.transaction() as conn:
        paths = [r[0] for r in conn.execute(
            "SELECT path FROM images WHERE request_id = ?", (request_id,)
        ).fetchall()]
        conn.execute("DELETE FROM images WHERE request_id = ?", (request_id,))
        conn.execute(
            "UPDATE tasks SET state = 'accepted', finished_at = NULL WHERE request_id = ?",
            (request_id,),
        )
    for path in paths:
        Path(path).unlink()


def _status(ledger: Ledger, request_id: str) -> str:
    with ledger.reading() as conn:
        row = conn.execute("SELECT status FROM requests WHERE id = ?", (request_id,)).fetchone()
    return str(row[0])


@pytest.fixture
def fleet_router(make_router: MakeRouter, url: str) -> Iterator[Router]:
    yield make_router({"ledger": {"url": url}})


def test_resume_leaves_a_live_replicas_paid_task_and_collects_it_once_its_heartbeat_lapses(
    fleet_router: Router, emulators: Emulators
) -> None:
    router, ledger = fleet_router, fleet_router.ledger
    assert ledger is not None
    result = router.generate("a lighthouse")
    _uncollect(router, result.request_id)
    owner = _foreign_owner(ledger, result.request_id)

    assert router.resume() == []  # a live process on another host runs it
    assert _status(ledger, result.request_id) == "running"
    assert [t.request_id for t in ledger.uncollected()] == [result.request_id]

    _lapse(ledger, owner)
    [outcome] = router.resume()
    assert outcome.state == "collected" and all(Path(p).exists() for p in outcome.images)
    assert _status(ledger, result.request_id) == "interrupted"
    assert sum(emulators.created().values()) == 1  # collected, never created again


def test_resume_leaves_a_live_replicas_unknown_task_and_reconciles_it_once_it_lapses(
    fleet_router: Router, emulators: Emulators
) -> None:
    router, ledger = fleet_router, fleet_router.ledger
    assert ledger is not None
    emulators.apps["runflow"].options.faults.add("create:reset_after_send@1;find:500@1")
    with pytest.raises(ProviderError) as caught:
        router.generate("a lighthouse", model="gpt-image-1.5", quality="medium")
    assert caught.value.accepted == "unknown"
    [row] = ledger.history(limit=1)
    emulators.apps["runflow"].options.faults.clear()
    owner = _foreign_owner(ledger, row.request_id)

    assert router.resume() == []  # not even looked up: its owner may still be creating it
    [unknown] = ledger.unknown_tasks()
    assert unknown.state == "unknown" and unknown.checks == 0
    assert unknown.owner is not None and unknown.owner.owner_id == owner

    _lapse(ledger, owner)
    deadline = time.monotonic() + 20
    while (states := [o.state for o in router.resume()]) != ["collected"]:
        assert states in (["running"], []), states
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert emulators.created() == {"runapi": 0, "runflow": 1}


def test_resume_takes_a_reused_pid_with_another_start_token_for_dead(
    fleet_router: Router,
) -> None:
    router, ledger = fleet_router, fleet_router.ledger
    assert ledger is not None
    me = this_process()
    result = router.generate("a lighthouse")
    _uncollect(router, result.request_id)
    # This host, this (live) pid, a fresh heartbeat: but the pid was another process's then.
    _foreign_owner(ledger, result.request_id, host_key=me.host_key, start_token="reused")
    if me.start_token is None:  # no /proc: the probe cannot tell, so the heartbeat decides
        assert router.resume() == []
        return
    [outcome] = router.resume()
    assert outcome.state == "collected"


@pytest.mark.skipif(not LINUX, reason="start tokens come from /proc")
def test_resume_leaves_a_live_pid_with_its_start_token_whatever_its_heartbeat(
    fleet_router: Router,
) -> None:
    router, ledger = fleet_router, fleet_router.ledger
    assert ledger is not None
    me = this_process()
    result = router.generate("a lighthouse")
    _uncollect(router, result.request_id)
    # Another owner id (another ledger's row, say) but this very process: alive.
    _foreign_owner(ledger, result.request_id, host_key=me.host_key,
                   start_token=me.start_token, age_s=3600)
    assert router.resume() == []
    assert _status(ledger, result.request_id) == "running"


# -- idempotency claims --------------------------------------------------------------------


def test_a_claim_of_another_host_is_no_orphan_until_its_heartbeat_lapses(url: str) -> None:
    with open_ledger(url) as ledger:
        store = IdempotencyStore(ledger)
        key = IdempotencyKey.of("k-1")
        claim = store.claim(key, "fp", operation="generate", request_id="r1")
        record = store.lookup(key)
        assert record is not None and record.owner_id == this_process().owner_id
        assert not store.is_orphan(record)  # this process runs it
        owner = uuid.uuid4().hex
        with ledger.transaction() as conn:
            conn.execute(
                "INSERT INTO owners (id, host, host_key, pid, proc_start, started_at, seen_at)"
                f" VALUES (?, 'replica-b', 'boot-b/pid:[1]', ?, NULL, 'x', {clock_sql(conn)})",
                (owner, os.getpid()),
            )
            conn.execute(
                "UPDATE idempotency_keys SET owner_id = ? WHERE key_hash = ?",
                (owner, key.key_hash),
            )
        record = store.lookup(key)
        # Same pid as ours, on another host, with our claim token even: still not ours.
        assert record is not None and record.claim == claim.token  # type: ignore[union-attr]
        assert not store.is_orphan(record)
        _lapse(ledger, owner)
        record = store.lookup(key)
        assert record is not None and store.is_orphan(record)
        store.abandon(key, record)  # nothing was paid: the key is given back
        assert store.lookup(key) is None
        assert Decimal(0) == ledger.committed_usd(None)

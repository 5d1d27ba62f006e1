"""Group commit: concurrent ledger writes share a transaction, and each is durable on return."""

from __future__ import annotations

import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from imagerouter.ledger import Ledger
from imagerouter.ledger_commit import deferred_commits

from .conftest import MakeRouter


def _begin(ledger: Ledger, request_id: str) -> None:
    ledger.begin_request(
        request_id, operation="generate", model="gpt-image-2", tier=None, prompt="p",
        request={}, output_dir="out", quoted_usd=Decimal("0.06"),
    )


def _committed_ids(path: Path) -> set[str]:
    # Another connection sees only what is committed.
    with sqlite3.connect(path) as other:
        return {row[0] for row in other.execute("SELECT id FROM requests")}


def _arrive_together(ledger: Ledger, targets: list[str], path: Path) -> dict[str, object]:
    """Start one writer per id while the connection is held, let them in once all wait."""
    seen: dict[str, object] = {}

    def write(request_id: str) -> None:
        try:
            _begin(ledger, request_id)
        except Exception as exc:
            seen[request_id] = exc
        else:
            # Returned: the row must already be committed (visible to another connection).
            seen[request_id] = request_id in _committed_ids(path)

    threads = [threading.Thread(target=write, args=(rid,)) for rid in targets]
    with ledger._lock:  # the connection is busy: every writer queues behind it
        for thread in threads:
            thread.start()
        while ledger._writes._arriving < len(targets):
            threading.Event().wait(0.001)
    for thread in threads:
        thread.join()
    return seen


def test_writers_arriving_together_share_one_commit(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        before = ledger._writes.commits
        ids = [f"req-{i}" for i in range(8)]
        seen = _arrive_together(ledger, ids, path)
        assert seen == {rid: True for rid in ids}
        assert ledger._writes.commits - before == 1
    assert _committed_ids(path) == set(ids)


def test_a_failing_writer_rolls_back_only_its_own_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _begin(ledger, "dup")
        seen = _arrive_together(ledger, ["a", "dup", "b"], path)
        assert seen["a"] is True and seen["b"] is True
        assert isinstance(seen["dup"], sqlite3.IntegrityError)
    assert _committed_ids(path) == {"dup", "a", "b"}


def test_a_lone_writer_commits_at_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        before = ledger._writes.commits
        for i in range(3):
            _begin(ledger, f"r{i}")
            assert f"r{i}" in _committed_ids(path)
        assert ledger._writes.commits - before == 3
        with pytest.raises(KeyError):
            ledger.end_request(
                "missing", status="served", provider=None, model=None, cost_usd=None,
                billed_usd=None,
            )
        # The failed write left no transaction open behind it.
        assert not ledger._conn.in_transaction
        _begin(ledger, "after")
    assert _committed_ids(path) == {"r0", "r1", "r2", "after"}


def test_deferred_writes_are_committed_together_when_made_durable(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        before = ledger._writes.commits
        with deferred_commits() as pending:
            _begin(ledger, "d1")
            _begin(ledger, "d2")
            assert _committed_ids(path) == set()  # in the open transaction, not on disk
            assert not pending.durable()
            pending.make_durable()
            assert pending.durable()
            assert _committed_ids(path) == {"d1", "d2"}
            assert ledger._writes.commits - before == 1
            _begin(ledger, "d3")
            pending.make_durable(final=True)
            _begin(ledger, "after the end")  # the request ended: commits on its own
            assert _committed_ids(path) == {"d1", "d2", "d3", "after the end"}
        _begin(ledger, "outside")
        assert "outside" in _committed_ids(path)


def test_a_waiting_writer_is_not_left_behind_a_deferred_one(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        seen: dict[str, object] = {}

        def deferring() -> None:
            with deferred_commits():
                _begin(ledger, "deferred")

        def waiting() -> None:
            _begin(ledger, "waiting")
            seen["waiting"] = "waiting" in _committed_ids(path)

        threads = [threading.Thread(target=waiting), threading.Thread(target=deferring)]
        with ledger._lock:
            for thread in threads:
                thread.start()
            while ledger._writes._arriving < 2:
                threading.Event().wait(0.001)
        for thread in threads:
            thread.join()
        assert seen == {"waiting": True}


class LedgerWatchingTransport(httpx.AsyncBaseTransport):
    """Real loopback HTTP; before each request, notes which task states are on disk."""

    def __init__(self, path: Path) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._path = path
        self.seen: list[tuple[str, str, set[str]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with sqlite3.connect(self._path) as other:
            states = {row[0] for row in other.execute("SELECT state FROM tasks")}
        self.seen.append((request.method, request.url.path, states))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def test_a_request_s_rows_are_on_disk_before_each_call_and_at_the_end(
    make_router: MakeRouter, tmp_path: Path
) -> None:
    watcher = LedgerWatchingTransport(tmp_path / "unset")
    router = make_router(transport=watcher)
    assert router.ledger is not None
    watcher._path = router.ledger.path
    before = router.ledger._writes.commits, router.ledger._writes.writes
    result = router.generate("a lighthouse")
    commits = router.ledger._writes.commits - before[0]
    writes = router.ledger._writes.writes - before[1]
    create = next(i for i, (method, _, _) in enumerate(watcher.seen) if method == "POST")
    # The paid create left only once its task row was committed ...
    assert "submitting" in watcher.seen[create][2]
    # ... and the first poll only once the acceptance was.
    first_poll = watcher.seen[create + 1]
    assert first_poll[0] == "GET" and "accepted" in first_poll[2]
    # On return, the image's row is on disk.
    with sqlite3.connect(router.ledger.path) as other:
        saved = [row[0] for row in other.execute("SELECT path FROM images")]
    assert saved == [str(result.images[0].path)]
    # Coalesced: fewer transactions than writes.
    assert 0 < commits < writes

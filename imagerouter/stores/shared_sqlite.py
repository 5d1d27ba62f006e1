"""Backend health in a SQLite file (`shared.url: sqlite`): one machine, many processes.

Each CLI command is a fresh process; with this store a breaker opened by one `generate` is
seen by the next command and by `imagerouter health`. Reads never touch the file: records
live in a `HealthMirror` (shared_mirror.py), read once from the file when the store opens (a
short synchronous read at process start). A daemon thread of this store does the rest:

- it pushes queued changes: read, change and write inside one `BEGIN IMMEDIATE` transaction
  (SQLite's write lock is the compare-and-set), so processes never lose each other's edits;
- every `refresh_s` it asks `PRAGMA data_version` whether another process committed, and
  if so reads every record again into the mirror.

`close()` (Router.close) pushes what is queued before the process ends; so does an atexit
hook for a process that forgets to close.
"""

from __future__ import annotations

import atexit
import json
import logging
import sqlite3
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..health_store import BackendHealth, BackendKey, key_from_text, key_text
from .shared_mirror import HealthMirror, Push

__all__ = ["SqliteHealthStore"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_SCHEMA = "CREATE TABLE IF NOT EXISTS health (backend TEXT PRIMARY KEY, record TEXT NOT NULL)"
_RETRY_S = 1.0  # after a failed push or read (file locked past the timeout, disk full, ...)


class SqliteHealthStore:
    """Health records as JSON rows in `path` (created with its directory if missing)."""

    def __init__(self, path: Path, *, timeout_s: float = 10.0, refresh_s: float = 0.5) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE in `_push_all`). Used by
        # the store's thread only, after this constructor's first read.
        self._conn = sqlite3.connect(
            path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        self._conn.execute("PRAGMA synchronous=NORMAL")  # health is not money: no fsync each
        self._conn.execute(_SCHEMA)
        self._refresh_s = refresh_s
        self._seq = 0  # versions for the mirror: one thread reads and writes, so a counter
        self._mirror = HealthMirror(self._wake)
        self._data_version = self._read_all()
        self._due = threading.Event()
        self._stopping = threading.Event()
        self._warned = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="imagerouter-health-sqlite",
                                        daemon=True)
        self._thread.start()
        this = weakref.ref(self)

        def flush_at_exit() -> None:
            store = this()
            if store is not None:
                store.close()

        self._at_exit = flush_at_exit
        atexit.register(flush_at_exit)

    # -- the HealthStore interface: memory only ----------------------------------------------

    def get(self, key: BackendKey) -> BackendHealth | None:
        return self._mirror.get(key)

    def put(self, key: BackendKey, record: BackendHealth) -> None:
        self._mirror.put(key, record)

    def items(self) -> list[tuple[BackendKey, BackendHealth]]:
        return self._mirror.items()

    def update(self, key: BackendKey, change: Callable[[BackendHealth], T]) -> T:
        return self._mirror.update(key, change)

    # -- waiting and closing -------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every change made here is in the file; False if `timeout` ran out."""
        return self._mirror.wait_settled(timeout)

    def wait_for(
        self, key: BackendKey, test: Callable[[BackendHealth], bool], timeout: float
    ) -> bool:
        """Wait until this store's record of `key` passes `test` (tests, tools)."""
        return self._mirror.wait_for_record(key, test, timeout)

    def close(self, *, flush_timeout: float = 10.0) -> None:
        """Push what is queued, stop the thread, close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        self._stopping.set()
        self._due.set()
        self._thread.join(flush_timeout)  # the thread pushes once more on its way out
        if not self._thread.is_alive():
            self._conn.close()

    # -- the store's thread ----------------------------------------------------------------------

    def _wake(self) -> None:
        self._due.set()

    def _run(self) -> None:
        while True:
            self._due.wait(self._refresh_s)
            self._due.clear()
            stopping = self._stopping.is_set()
            try:
                self._push_all()
                if not stopping:
                    self._refresh()
            except sqlite3.Error as exc:
                self._mirror.reachable = False
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "shared health file %s unusable (%s); using this process's own "
                        "health records until it works again", self.path, exc,
                    )
                if stopping:
                    return
                self._stopping.wait(_RETRY_S)
                continue
            self._mirror.reachable = True
            if self._warned:
                self._warned = False
                log.warning("shared health file %s usable again", self.path)
            if stopping:
                return

    def _push_all(self) -> None:
        pushes = [p for p in map(self._mirror.begin_push, self._mirror.dirty()) if p is not None]
        if not pushes:
            return
        written: list[tuple[Push, BackendHealth]] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")  # the file's write lock: our compare-and-set
            try:
                for push in pushes:
                    row = self._conn.execute(
                        "SELECT record FROM health WHERE backend = ?", (key_text(push.key),)
                    ).fetchone()
                    fresh = Push(push.key, None if row is None else _load(row[0]), 0,
                                 push.changes)
                    record = fresh.apply()
                    self._conn.execute(
                        "INSERT OR REPLACE INTO health (backend, record) VALUES (?, ?)",
                        (key_text(push.key), json.dumps(record.to_dict())),
                    )
                    written.append((push, record))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except BaseException:
            for push in pushes:
                self._mirror.abandon(push)
            raise
        for push, record in written:
            self._seq += 1
            self._mirror.pushed(push, self._seq, record)

    def _refresh(self) -> None:
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:  # another connection committed since we looked
            self._data_version = self._read_all()

    def _read_all(self) -> int:
        """Read every record into the mirror; the file's data_version they are from."""
        self._conn.execute("BEGIN")  # one snapshot: the version and the rows agree
        try:
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            rows = self._conn.execute("SELECT backend, record FROM health").fetchall()
        finally:
            self._conn.execute("COMMIT")
        self._seq += 1
        for backend, raw in rows:
            try:
                self._mirror.heard(key_from_text(backend), self._seq, _load(raw))
            except (ValueError, TypeError):
                log.warning("ignored a malformed health row in %s", self.path)
        return version

    def __repr__(self) -> str:
        return f"SqliteHealthStore({str(self.path)!r})"


def _load(raw: str) -> BackendHealth:
    return BackendHealth.from_dict(json.loads(raw))

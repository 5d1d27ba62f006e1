"""Backend health in a SQLite file (`shared.url: sqlite`): one machine, many processes.

Each CLI command is a fresh process; with this store a breaker opened by one `generate` is
seen by the next command and by `imagerouter health`. The compare-and-set is SQLite's own
write lock: `update` runs read, change and write inside one `BEGIN IMMEDIATE` transaction,
so two processes never interleave an edit of the same record.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..health_store import BackendHealth, BackendKey, key_from_text, key_text

__all__ = ["SqliteHealthStore"]

T = TypeVar("T")

_SCHEMA = "CREATE TABLE IF NOT EXISTS health (backend TEXT PRIMARY KEY, record TEXT NOT NULL)"


class SqliteHealthStore:
    """Health records as JSON rows in `path` (created with its directory if missing)."""

    def __init__(self, path: Path, *, timeout_s: float = 10.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE in `update`).
        self._conn = sqlite3.connect(
            path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            self._conn.execute(_SCHEMA)

    def get(self, key: BackendKey) -> BackendHealth | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT record FROM health WHERE backend = ?", (key_text(key),)
            ).fetchone()
        return None if row is None else _load(row[0])

    def put(self, key: BackendKey, record: BackendHealth) -> None:
        with self._lock:
            self._write(key, record)

    def items(self) -> list[tuple[BackendKey, BackendHealth]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT backend, record FROM health ORDER BY backend"
            ).fetchall()
        return [(key_from_text(backend), _load(raw)) for backend, raw in rows]

    def update(self, key: BackendKey, change: Callable[[BackendHealth], T]) -> T:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # takes the file's write lock now
            try:
                row = self._conn.execute(
                    "SELECT record FROM health WHERE backend = ?", (key_text(key),)
                ).fetchone()
                record = BackendHealth() if row is None else _load(row[0])
                result = change(record)
                self._write(key, record)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, key: BackendKey, record: BackendHealth) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO health (backend, record) VALUES (?, ?)",
            (key_text(key), json.dumps(record.to_dict())),
        )

    def __repr__(self) -> str:
        return f"SqliteHealthStore({str(self.path)!r})"


def _load(raw: str) -> BackendHealth:
    return BackendHealth.from_dict(json.loads(raw))

"""The ledger on PostgreSQL (`ledger.url: postgresql://...`), for replicas that share it.

`PgLedger` is the SQLite `Ledger` with its one connection swapped for a psycopg 3
connection behind a small adapter (`PgConnection`) that speaks the sqlite3 subset the ledger
uses. So the ledger's SQL, its write-ahead rules, its group commit and the async writer
thread (`stores/aio.py`) are one code path for both backends, and a migration written once
for SQLite is applied to PostgreSQL by translating its statements (`translate`):
`?` placeholders, `BEGIN IMMEDIATE`, `INSERT OR REPLACE/IGNORE`, `group_concat(x)`, `REAL`,
`BLOB` and `INTEGER PRIMARY KEY`; every table gets a `rowid BIGSERIAL` column so the ledger's
`ORDER BY ..., rowid` (insertion order) means the same. PRAGMAs are no-ops.

Across processes: a reservation takes a transaction-level advisory lock before it reads the
committed spend, so reservations from any number of replicas are serialized and N replicas
against one budget overshoot by zero. Migrations run under a session advisory lock, so
replicas starting together migrate once. Durability is PostgreSQL's own (a COMMIT that
returned is on disk with the server's default `synchronous_commit`).

Writes keep that one connection (group commit, write-ahead order, the reservation lock);
reads go to a pool of read-only connections beside it (`pg_reads.py`), so they never wait
for the writer's batches. A server that refuses connections or drops one mid-statement is a
`LedgerUnavailableError` (a request stops before any paid call); the next call reconnects.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

from ..errors import LedgerUnavailableError
from ..ledger import Ledger, _utc_now
from ..ledger_commit import current_pending
from ..ledger_reports import iso
from ..migrations import migrate
from . import redact_url

if TYPE_CHECKING:
    from .aio import AsyncLedger

__all__ = [
    "CONNECT_DEFAULTS",
    "PgConnection",
    "PgLedger",
    "Row",
    "conninfo",
    "redact_url",
    "translate",
    "unavailable",
]

# pg_advisory_* keys: 'imgr' + which lock. Any int64 not used by the application is fine.
_RESERVE_LOCK = 0x696D6772_0001
_MIGRATE_LOCK = 0x696D6772_0002

_CREATE_TABLE = re.compile(r"^(\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?\"?\w+\"?\s*\()", re.I)
_GROUP_CONCAT = re.compile(r"\bgroup_concat\(([^(),]*)\)", re.I)
_UPSERT = re.compile(r"^\s*INSERT\s+OR\s+(REPLACE|IGNORE)\s+INTO\s+(\w+)\s*\(([^)]*)\)", re.I)


def translate(sql: str, primary_key: Callable[[str], Sequence[str]], *, params: bool) -> str:
    """One SQLite statement as PostgreSQL runs it ('' for a no-op). `primary_key(table)`
    names a table's key columns (for INSERT OR REPLACE). `params`: the statement has `?`
    placeholders (they become %s, and a literal % becomes %%)."""
    head = sql.lstrip()[:16].upper()
    if head.startswith("PRAGMA"):
        return ""
    if head.startswith(("BEGIN IMMEDIATE", "BEGIN EXCLUSIVE", "BEGIN DEFERRED")):
        return "BEGIN"
    if head.startswith(("CREATE", "ALTER")):
        sql = _CREATE_TABLE.sub(r"\1 rowid BIGSERIAL,", sql, count=1)
        sql = re.sub(
            r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?",
            "BIGSERIAL PRIMARY KEY",
            sql,
            flags=re.I,
        )
        sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql, flags=re.I)
        sql = re.sub(r"\bBLOB\b", "BYTEA", sql, flags=re.I)
    if "group_concat" in sql.lower():
        sql = _GROUP_CONCAT.sub(r"string_agg(CAST(\1 AS TEXT), ',')", sql)
    upsert = _UPSERT.match(sql)
    if upsert:
        kind, table, columns = upsert.groups()
        sql = sql[: upsert.start()] + f"INSERT INTO {table} ({columns})" + sql[upsert.end() :]
        sql = sql.rstrip().rstrip(";")
        if kind.upper() == "IGNORE":
            sql += " ON CONFLICT DO NOTHING"
        else:
            key = list(primary_key(table))
            names = [c.strip() for c in columns.split(",")]
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in names if c not in key)
            sql += f" ON CONFLICT ({', '.join(key)}) DO " + (
                f"UPDATE SET {sets}" if sets else "NOTHING"
            )
    return _placeholders(sql) if params else sql


def _placeholders(sql: str) -> str:
    """`?` -> `%s` and `%` -> `%%`, outside quoted strings and comments."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = sql.find(ch, i + 1)
            end = n - 1 if end < 0 else end
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
            continue
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            i = end  # comments are dropped: they may hold quotes or question marks
            continue
        out.append("%s" if ch == "?" else "%%" if ch == "%" else ch)
        i += 1
    return "".join(out)


class Row(tuple[Any, ...]):
    """A result row read by position or (case-insensitive) column name, like sqlite3.Row.
    `keys()` leaves out the `rowid` column PostgreSQL tables carry here."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, (_value(v) for v in values))
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key.lower()])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return [name for name in self._index if name != "rowid"]


def _value(value: Any) -> Any:
    # SUM() and friends are NUMERIC in PostgreSQL, integers in SQLite: keep SQLite's types.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    description = cursor.description or []
    index = {column.name.lower(): n for n, column in enumerate(description)}
    return lambda values: Row(values, index)


def _param(value: Any) -> Any:
    # The ledger stores money, times and flags as SQLite does: text, ISO text, integers.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, PurePath):
        return str(value)
    return value


_ERRORS: tuple[tuple[type[psycopg.Error], type[sqlite3.Error]], ...] = (
    (psycopg.IntegrityError, sqlite3.IntegrityError),
    (psycopg.OperationalError, sqlite3.OperationalError),
    (psycopg.DataError, sqlite3.DataError),
    (psycopg.ProgrammingError, sqlite3.ProgrammingError),
)


# libpq settings every ledger connection gets unless the URL names them: a server that stops
# answering (a lost machine, a partition) fails the call in seconds instead of hanging it for
# the kernel's two-hour TCP default.
CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms that sent data may stay unacknowledged
}


def conninfo(url: str) -> str:
    """`url` with `CONNECT_DEFAULTS` for what it leaves unset."""
    params = conninfo_to_dict(url)
    for key, value in CONNECT_DEFAULTS.items():
        params.setdefault(key, value)
    return make_conninfo("", **params)


def unavailable(url: str, exc: psycopg.Error) -> LedgerUnavailableError:
    """The error for a server that refused a connection or dropped one: its first line (the
    rest is libpq's advice), with the URL's password redacted."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return LedgerUnavailableError(f"the ledger at {redact_url(url)} is unavailable: {first}")


def _as_sqlite_error(exc: psycopg.Error) -> sqlite3.Error:
    """The sqlite3 exception class the ledger's callers already handle, PostgreSQL's text."""
    for pg_type, sqlite_type in _ERRORS:
        if isinstance(exc, pg_type):
            return sqlite_type(f"postgresql: {exc}")
    return sqlite3.DatabaseError(f"postgresql: {exc}")


class _Cursor:
    """What the ledger reads from a sqlite3 cursor: rowcount, fetchone/fetchall, iteration."""

    def __init__(self, cursor: psycopg.Cursor[Row] | None) -> None:
        self._cursor = cursor
        self.rowcount = -1 if cursor is None else cursor.rowcount
        self.lastrowid = None

    def _has_rows(self) -> bool:
        return self._cursor is not None and self._cursor.description is not None

    def fetchone(self) -> Row | None:
        return self._cursor.fetchone() if self._cursor is not None and self._has_rows() else None

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall() if self._cursor is not None and self._has_rows() else []

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class PgConnection:
    """One psycopg connection that behaves like the ledger's sqlite3 connection (autocommit,
    explicit BEGIN/COMMIT). Not thread-safe: the ledger's lock guards it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.row_factory: object = None  # set by callers that expect sqlite3; rows are Row
        self._keys: dict[str, list[str]] = {}
        self._conn = self._open()

    def _open(self) -> psycopg.Connection[Row]:
        try:
            return psycopg.connect(conninfo(self.url), autocommit=True, row_factory=_row_factory)
        except psycopg.OperationalError as exc:
            raise unavailable(self.url, exc) from None
        except psycopg.Error as exc:
            raise _as_sqlite_error(exc) from None

    @property
    def in_transaction(self) -> bool:
        # A broken connection's transaction is gone: say so, so the ledger's group commit
        # drops its batch (its callers get the error) and the next write starts afresh.
        if self._conn.broken:
            return False
        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Cursor:
        if self._conn.broken or self._conn.closed:
            # The server restarted or dropped us: reconnect. Whatever transaction was open is
            # lost, and the calls in it were already told so.
            self._conn.close()
            self._conn = self._open()
        try:
            statement = translate(sql, self._primary_key, params=bool(parameters))
            if not statement:
                return _Cursor(None)
            if parameters:
                cursor = self._conn.execute(statement, [_param(p) for p in parameters])
            else:
                cursor = self._conn.execute(statement)
        except psycopg.Error as exc:
            if self._conn.broken:  # the server went away mid-statement
                raise unavailable(self.url, exc) from exc
            raise _as_sqlite_error(exc) from exc
        return _Cursor(cursor)

    def _primary_key(self, table: str) -> list[str]:
        if table not in self._keys:
            rows = self._conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = %s::regclass AND i.indisprimary",
                (table,),
            ).fetchall()
            if not rows:
                raise sqlite3.OperationalError(f"postgresql: table {table!r} has no primary key")
            self._keys[table] = [str(r[0]) for r in rows]
        return self._keys[table]

    def close(self) -> None:
        self._conn.close()


class PgLedger(Ledger):
    """The ledger in the PostgreSQL database at `url` (created schema, migrated on open).

    Writes go through one connection, as in SQLite; reads through a pool of `pool_size`
    more (stores/pg_reads.py), so they do not wait behind the writer's batches."""

    def __init__(
        self,
        url: str,
        *,
        now: Callable[[], datetime] = _utc_now,
        pool_size: int | None = None,
    ) -> None:
        from .pg_reads import POOL_SIZE, ReadPool

        self.url = url
        self.reads = ReadPool(url, size=POOL_SIZE if pool_size is None else pool_size)
        # `path` is the SQLite file for a Ledger; here it only names the backend.
        super().__init__("postgresql", now=now)

    def __repr__(self) -> str:
        return f"PgLedger({redact_url(self.url)!r})"

    @property
    def aio(self) -> AsyncLedger:
        """Ledger.aio, whose reads run on the read pool (pg_reads.PgAsyncLedger)."""
        if self._aio is None:
            from .pg_reads import PgAsyncLedger

            with self._aio_lock:
                if self._aio is None:
                    self._aio = PgAsyncLedger(self)
        return self._aio

    def reads_pooled(self) -> bool:
        """Whether a read by this caller may use the read pool (committed rows only): not
        inside a write on this thread, nor in a request whose deferred writes are not
        durable yet (it must read its own writes, in the writer's open transaction)."""
        if getattr(self._writes._local, "depth", 0):
            return False
        pending = current_pending()
        return pending is None or pending.durable()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read connection: a pooled one when `reads_pooled()`, else the writer's."""
        if not self.reads_pooled():
            with super().reading() as conn:
                yield conn
            return
        with self.reads.reader() as reader:
            yield cast(sqlite3.Connection, reader)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.reads.close()

    def _connect(self) -> sqlite3.Connection:
        conn = PgConnection(self.url)
        try:
            conn.execute("SELECT pg_advisory_lock(?)", (_MIGRATE_LOCK,))
            try:
                migrate(cast(sqlite3.Connection, conn), now=self._stamp())
            finally:
                conn.execute("SELECT pg_advisory_unlock(?)", (_MIGRATE_LOCK,))
        except BaseException:
            conn.close()
            raise
        return cast(sqlite3.Connection, conn)

    def reserve(self, *args: Any, **kwargs: Any) -> None:
        """Ledger.reserve, serialized with every other process's reservations: the advisory
        lock is held until this transaction commits, so the spend it reads is all there is."""
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_RESERVE_LOCK,))
            super().reserve(*args, **kwargs)

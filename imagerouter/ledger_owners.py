"""Who owns a request: a per-process owner identity, its heartbeat, and the liveness rule.

`resume` and the gateway's sweeper collect the paid tasks of requests whose process is dead
and must leave alone those a live process still runs. A PID alone cannot tell: with one
PostgreSQL ledger shared by replicas on several machines a PID means nothing on another
host, and PIDs are reused after a restart (a container's server is often pid 1 every time).
So each process that writes requests has an owner row (`owners`, migration m008): a random
id, its host, the PID namespace it counts PIDs in (`host_key`), its PID and start token, and
`seen_at`, renewed every `HEARTBEAT_S` by a daemon thread on a connection of its own. Rows of
`requests` and `idempotency_keys` carry the owner id next to `owner_pid`.

`owner_alive` decides (a pure function: the clock, this process and the PID probe are
passed in or read from the row):
- only a `running` request has a live owner;
- a row of this process is alive;
- on the same host (same boot, same PID namespace), a PID that is gone, a zombie, or that
  now names a process with another start token (a reused PID) is dead, and the PID with the
  same start token is alive;
- otherwise the owner is alive iff its `seen_at` is at most `OWNER_TTL_S` old by the
  ledger's clock (PostgreSQL's `clock_timestamp()`, so hosts' clocks need not agree; SQLite:
  the one machine's clock), both read in the same query as the row;
- a row without an owner id (written before m008) falls back to the PID rule.

This module sits with the other `ledger_*` modules (and not in `stores/`, where the ledger's
backends will move together) because `ledger_recovery` imports it while `imagerouter.ledger`
is still being imported, and `imagerouter.stores` imports the ledger.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sqlite3
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = [
    "HEARTBEAT_S",
    "OWNER_COLUMNS",
    "OWNER_TTL_S",
    "Heartbeat",
    "Liveness",
    "OwnerRegistry",
    "OwnerSeen",
    "ProcessIdentity",
    "clock_sql",
    "owner_alive",
    "owner_seen",
    "probe_process",
    "this_process",
]

log = logging.getLogger("imagerouter.owners")

HEARTBEAT_S = 10.0  # how often a process that writes requests renews its owner row
OWNER_TTL_S = 30.0  # three missed heartbeats: the owner is taken for dead

# The ledger's own clock, as epoch seconds, in each backend's SQL.
_SQLITE_CLOCK = "((julianday('now') - 2440587.5) * 86400.0)"
_PG_CLOCK = "extract(epoch from clock_timestamp())"

# What the recovery queries select with `LEFT JOIN owners o ON o.id = <row>.owner_id`
# (plus the row's `owner_id` and `<clock_sql> AS ledger_now`) for `owner_seen`.
OWNER_COLUMNS = (
    "o.host AS owner_host, o.host_key AS owner_host_key, o.pid AS owner_row_pid,"
    " o.proc_start AS owner_proc_start, o.seen_at AS owner_seen_at"
)


def clock_sql(conn: object) -> str:
    """The SQL expression for the ledger's clock (epoch seconds) on this connection."""
    return _SQLITE_CLOCK if isinstance(conn, sqlite3.Connection) else _PG_CLOCK


# -- who this process is ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessIdentity:
    """This process as its owner row names it. `owner_id` is random (never derived from a
    key or anything else secret) and new in every process, forks included."""

    owner_id: str
    host: str  # the hostname, for people reading the table
    host_key: str  # boot and PID namespace: two PIDs compare only under the same key
    pid: int
    start_token: str | None  # the kernel's start time of the process (Linux), else None
    started_at: str  # ISO-8601 UTC


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _host_key(host: str) -> str:
    """Linux: the boot id and the PID namespace (containers on one kernel count PIDs apart);
    elsewhere the hostname."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    if boot and namespace:
        return f"{boot}/{namespace}"
    return f"host:{host}"


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat, None if unread."""
    text = _read(f"/proc/{pid}/stat")
    if text is None or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses
    if len(fields) < 20:
        return None
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


_identity: ProcessIdentity | None = None
_identity_lock = threading.Lock()


def this_process() -> ProcessIdentity:
    """This process's identity (made once per process; a forked child makes its own)."""
    global _identity
    current = _identity
    pid = os.getpid()
    if current is not None and current.pid == pid:
        return current
    with _identity_lock:
        if _identity is None or _identity.pid != pid:
            host = socket.gethostname()
            stat = _stat(pid)
            _identity = ProcessIdentity(
                owner_id=secrets.token_hex(16),
                host=host,
                host_key=_host_key(host),
                pid=pid,
                start_token=None if stat is None else stat[1],
                started_at=datetime.now(UTC).isoformat(timespec="microseconds"),
            )
        return _identity


class Liveness(StrEnum):
    ALIVE = "alive"
    DEAD = "dead"
    UNSURE = "unsure"  # the PID exists but nothing says it is still the same process


def probe_process(pid: int, start_token: str | None) -> Liveness:
    """What this host says of `pid` (a process recorded with `start_token`)."""
    if pid <= 0:
        return Liveness.DEAD  # never signal a process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return Liveness.DEAD
    except PermissionError:
        pass  # someone else's process with that pid: look at its start time
    except OSError:
        return Liveness.DEAD
    stat = _stat(pid)
    if stat is None:
        return Liveness.UNSURE
    state, started = stat
    if state in ("Z", "X"):
        return Liveness.DEAD  # killed, not reaped yet: it runs nothing
    if start_token is None:
        return Liveness.UNSURE
    return Liveness.ALIVE if started == start_token else Liveness.DEAD


class Probe(Protocol):
    def __call__(self, pid: int, start_token: str | None, /) -> Liveness: ...


# -- the rule ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerSeen:
    """An owner row as a recovery query read it, with the ledger's clock at that moment."""

    owner_id: str
    host: str
    host_key: str
    pid: int
    start_token: str | None
    seen_at: float  # epoch seconds, the ledger's clock
    read_at: float  # the ledger's clock when the row was read


def owner_seen(row: Any) -> OwnerSeen | None:
    """The owner of a row selected with `owner_id`, OWNER_COLUMNS and `ledger_now`; None for
    a row without an owner id (before m008) or whose owner row is missing."""
    owner_id = row["owner_id"]
    if owner_id is None or row["owner_seen_at"] is None:
        return None
    return OwnerSeen(
        owner_id=str(owner_id),
        host=str(row["owner_host"]),
        host_key=str(row["owner_host_key"]),
        pid=int(row["owner_row_pid"]),
        start_token=row["owner_proc_start"],
        seen_at=float(row["owner_seen_at"]),
        read_at=float(row["ledger_now"]),
    )


def owner_alive(
    status: str,
    owner_pid: int | None,
    owner: OwnerSeen | None = None,
    *,
    ttl_s: float = OWNER_TTL_S,
    now: float | None = None,
    here: ProcessIdentity | None = None,
    probe: Probe = probe_process,
) -> bool:
    """Whether a live process still runs this request (so its tasks are not ours to touch).
    `now` defaults to the ledger's clock when the owner row was read (`owner.read_at`);
    `here` to this process; `probe` asks this host about a PID. See the module docstring."""
    if status != "running":
        return False
    me = here or this_process()
    if owner is None:  # an old row: the PID rule, as before owner ids
        if owner_pid is None:
            return False  # older still: nobody to ask, so nobody runs it
        if owner_pid == me.pid:
            return True
        return probe(owner_pid, None) is not Liveness.DEAD
    if owner.owner_id == me.owner_id:
        return True
    if owner.host_key == me.host_key:
        seen = probe(owner.pid, owner.start_token)
        if seen is not Liveness.UNSURE:
            return seen is Liveness.ALIVE
    clock = owner.read_at if now is None else now
    return clock - owner.seen_at <= ttl_s


# -- the owner row and its heartbeat ---------------------------------------------------------


class _Beat:
    """One upsert of the owner row on a connection of the heartbeat's own."""

    def __init__(self, target: str | Path, me: ProcessIdentity, *, timeout_s: float) -> None:
        self._target = target
        self._me = me
        self._timeout_s = timeout_s
        self._conn: Any = None

    def __call__(self) -> None:
        me = self._me
        values = (me.owner_id, me.host, me.host_key, me.pid, me.start_token, me.started_at)
        try:
            if isinstance(self._target, Path):
                if self._conn is None:
                    self._conn = sqlite3.connect(
                        self._target, timeout=self._timeout_s, isolation_level=None,
                        check_same_thread=False,
                    )
                self._conn.execute(_upsert(_SQLITE_CLOCK, "?"), values)
            else:
                if self._conn is None:
                    import psycopg

                    self._conn = psycopg.connect(
                        self._target, autocommit=True, connect_timeout=max(1, int(self._timeout_s))
                    )
                self._conn.execute(_upsert(_PG_CLOCK, "%s"), values)
        except Exception:
            self.close()  # a new connection next time (the server may have restarted)
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing the heartbeat's connection failed", exc_info=True)


def _upsert(clock: str, mark: str) -> str:
    marks = ", ".join([mark] * 6)
    return (
        "INSERT INTO owners (id, host, host_key, pid, proc_start, started_at, seen_at)"  # noqa: S608 - constants only
        f" VALUES ({marks}, {clock})"
        " ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at"
    )


class Heartbeat:
    """A daemon thread calling `beat` now and then every `interval_s` until `stop()`.
    `confirmed` is set once a beat has succeeded; `on_beat` runs after each success."""

    def __init__(
        self,
        beat: Callable[[], None],
        *,
        interval_s: float,
        on_beat: Callable[[], None] | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.confirmed = threading.Event()
        self.pid = os.getpid()
        self._beat = beat
        self._on_beat = on_beat
        self._close = close
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imagerouter-owner-heartbeat",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)  # a beat stuck on a dead server is a daemon: let go

    def _run(self) -> None:
        failing = False
        try:
            while not self._stop.is_set():
                try:
                    self._beat()
                except Exception:
                    if not failing:  # once per outage, not every beat
                        log.warning("owner heartbeat failed; retrying", exc_info=True)
                    failing = True
                else:
                    failing = False
                    self.confirmed.set()
                    if self._on_beat is not None:
                        self._on_beat()
                self._stop.wait(self.interval_s)
        finally:
            if self._close is not None:
                self._close()


class OwnerRegistry:
    """This process's owner row in one ledger: written with the first request (or
    idempotency claim) and kept fresh by a heartbeat until the ledger closes. A ledger
    only read (`imagerouter spend`, `history`) never writes one."""

    def __init__(self, ledger: Ledger, *, heartbeat_s: float = HEARTBEAT_S) -> None:
        url = getattr(ledger, "url", None)
        self._target: str | Path = str(url) if url else ledger.path
        self.heartbeat_s = heartbeat_s
        self.on_beat: Callable[[], None] | None = None  # tests: called after each beat
        self._lock = threading.Lock()
        self._heartbeat: Heartbeat | None = None
        self._closed = False
        # A ledger dropped without close() stops beating too (the thread holds no ledger).
        self._finalizer = weakref.finalize(ledger, _stop, self)
        self._finalizer.atexit = False  # daemon threads end with the process anyway

    def register(self, conn: Any) -> str:
        """This process's owner id, for a row about to be written in the write transaction
        on `conn`. Until a heartbeat has written the owner row, the row is inserted in the
        same transaction, so a request never names an owner row that does not exist."""
        me = this_process()
        heartbeat = self._heartbeat
        if heartbeat is None or heartbeat.pid != me.pid or not heartbeat.confirmed.is_set():
            conn.execute(
                "INSERT OR IGNORE INTO owners (id, host, host_key, pid, proc_start,"  # noqa: S608 - constants only
                f" started_at, seen_at) VALUES (?, ?, ?, ?, ?, ?, {clock_sql(conn)})",
                (me.owner_id, me.host, me.host_key, me.pid, me.start_token, me.started_at),
            )
            self._start(me)
        return me.owner_id

    def _start(self, me: ProcessIdentity) -> None:
        with self._lock:
            current = self._heartbeat
            if self._closed or (current is not None and current.pid == me.pid):
                return  # running (or this ledger is closed); a forked child starts its own
            beat = _Beat(self._target, me, timeout_s=max(1.0, self.heartbeat_s))
            self._heartbeat = Heartbeat(
                beat, interval_s=self.heartbeat_s, on_beat=self.on_beat, close=beat.close
            )
            self._heartbeat.start()

    @property
    def heartbeat(self) -> Heartbeat | None:
        return self._heartbeat

    def close(self) -> None:
        """Stop the heartbeat (the ledger is closing). The row stays: its `seen_at` lapses."""
        with self._lock:
            self._closed = True
            heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None and heartbeat.pid == os.getpid():
            heartbeat.stop()


def _stop(registry: OwnerRegistry) -> None:
    registry.close()

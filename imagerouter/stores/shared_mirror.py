"""A local mirror of shared health records: reads from memory, writes pushed in the background.

The health tracker asks its store on every routing decision and writes on every attempt, on
whatever thread or event loop routes the request. A store that did a network or file round
trip there would block the loop (at 1,000 jobs in flight that is what event-loop lag is made
of). So the shared stores (shared_redis_health.py, shared_sqlite.py) keep a `HealthMirror`:

- a read is a copy of the mirrored record, from memory;
- a write is applied to the mirror at once (its result is the caller's answer) and queued;
  the store's own background thread pushes the queue with a compare-and-set, re-applying the
  queued changes to the fresh shared record when another process wrote in between;
- a record heard from the shared store (a change notice or a periodic full read) replaces the
  mirror's base, and the changes still queued are re-applied on top of it.

So every process ends up with every verdict (nothing is lost), and a process sees another's
verdicts as soon as they are heard. Changes must be safe to run more than once (the
HealthStore contract already says so): they run once locally, again on each push attempt,
and again when a newer base is heard before the push lands.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TypeVar

from ..health_store import BackendHealth, BackendKey

__all__ = ["MAX_QUEUED", "Change", "HealthMirror", "Push"]

T = TypeVar("T")
Change = Callable[[BackendHealth], object]
log = logging.getLogger(__name__)

MAX_QUEUED = 1000
"""Changes kept per backend while the shared store is unreachable. Past that the queue is
dropped: after a long outage the fleet's record, once heard again, is a better truth than one
replica's backlog (the mirror keeps what this process learned until then). While the store
answers nothing is dropped: a push carries every queued change, so a backlog drains."""


@dataclass
class _Entry:
    base: BackendHealth | None = None  # the last shared record heard (None: never stored)
    version: int = 0  # its version in the shared store (0: not stored there)
    changes: list[Change] = field(default_factory=list)  # applied here, not yet pushed
    view: BackendHealth = field(default_factory=BackendHealth)  # base + changes: what reads see
    seen: bool = False  # a record exists (shared or local); `items` lists only these
    pushing: bool = False
    heard_while_pushing: tuple[int, BackendHealth | None] | None = None


@dataclass(frozen=True)
class Push:
    """One push attempt: the changes to apply to `base`, expected at `version`."""

    key: BackendKey
    base: BackendHealth | None
    version: int
    changes: tuple[Change, ...]

    def apply(self) -> BackendHealth:
        """The record to write: the base with every queued change applied."""
        return _replay(self.base, self.changes)


class HealthMirror:
    """The records one process sees, and the changes it still owes the shared store."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake  # tells the store's background thread there is something to push
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified when a queue empties
        self._changed = threading.Condition(self._lock)  # notified when a record is heard
        self._entries: dict[BackendKey, _Entry] = {}
        self._dropped_warned = False
        self.reachable = True  # the store says so; a backlog is bounded only while it is not

    # -- what the tracker calls (any thread) -----------------------------------------------

    def get(self, key: BackendKey) -> BackendHealth | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry.view.copy() if entry is not None and entry.seen else None

    def items(self) -> list[tuple[BackendKey, BackendHealth]]:
        with self._lock:
            return sorted(
                (key, entry.view.copy()) for key, entry in self._entries.items() if entry.seen
            )

    def update(self, key: BackendKey, change: Callable[[BackendHealth], T]) -> T:
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            record = entry.view.copy()
            result = change(record)
            entry.view = record
            entry.seen = True
            if len(entry.changes) >= MAX_QUEUED and not self.reachable:
                self._drop(entry)
            entry.changes.append(change)
        self._wake()
        return result

    def put(self, key: BackendKey, record: BackendHealth) -> None:
        snapshot = record.copy()

        def replace_all(target: BackendHealth) -> None:
            fresh = snapshot.copy()
            for f in fields(BackendHealth):
                setattr(target, f.name, getattr(fresh, f.name))

        self.update(key, replace_all)

    # -- what the store's background thread calls ------------------------------------------

    def dirty(self) -> list[BackendKey]:
        """Keys with changes to push and no push under way."""
        with self._lock:
            return [k for k, e in self._entries.items() if e.changes and not e.pushing]

    def known_version(self, key: BackendKey) -> int:
        """The version of the newest shared record heard for `key` (0: none)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return 0
            held = entry.heard_while_pushing
            return max(entry.version, held[0] if held is not None else 0)

    def queued(self) -> int:
        with self._lock:
            return sum(len(e.changes) for e in self._entries.values())

    def begin_push(self, key: BackendKey) -> Push | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.changes or entry.pushing:
                return None
            entry.pushing = True
            return Push(key, entry.base, entry.version, tuple(entry.changes))

    def pushed(self, push: Push, version: int, record: BackendHealth) -> None:
        """The push landed as `version` of the shared record, which is now `record`."""
        with self._lock:
            entry = self._entries[push.key]
            entry.pushing = False
            done = len(push.changes)
            if entry.changes[:done] == list(push.changes):
                del entry.changes[:done]
            else:  # the queue was dropped meanwhile: what is left was queued after that
                entry.changes = [c for c in entry.changes if c not in push.changes]
            self._adopt(entry, version, record)
            heard, entry.heard_while_pushing = entry.heard_while_pushing, None
            if heard is not None:  # a later version already includes this push
                self._adopt(entry, *heard)
            if not entry.changes:
                self._settled.notify_all()

    def conflicted(self, push: Push, version: int, record: BackendHealth | None) -> Push:
        """Another process wrote first: adopt its record and push again on top of it."""
        with self._lock:
            entry = self._entries[push.key]
            entry.heard_while_pushing = None  # `record` is at least as new as anything heard
            # Forced: the shared store is the judge of its version, even a lower one (the key
            # was deleted there), or the next compare-and-set would expect a version gone.
            self._adopt(entry, version, record, force=True)
            return Push(push.key, entry.base, entry.version, tuple(entry.changes))

    def abandon(self, push: Push) -> None:
        """The push failed (store unreachable): keep the changes for the next attempt."""
        with self._lock:
            entry = self._entries[push.key]
            entry.pushing = False
            heard, entry.heard_while_pushing = entry.heard_while_pushing, None
            if heard is not None:
                self._adopt(entry, *heard)

    def heard(self, key: BackendKey, version: int, record: BackendHealth | None) -> None:
        """A shared record read or announced; ignored unless newer than what we have."""
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            if entry.pushing:
                # Whether this version includes the push under way is known only when the push
                # answers: keep it until then.
                held = entry.heard_while_pushing
                if held is None or version > held[0]:
                    entry.heard_while_pushing = (version, record)
                return
            self._adopt(entry, version, record)

    # -- waiting (close, tests) --------------------------------------------------------------

    def wait_settled(self, timeout: float) -> bool:
        """Wait until every queued change is pushed; False if `timeout` ran out first."""
        with self._lock:
            return self._settled.wait_for(
                lambda: not any(e.changes for e in self._entries.values()), timeout
            )

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds, checking each time a shared record is heard.
        `predicate` runs under the mirror's lock: it may read only what it was given."""
        with self._lock:
            return self._changed.wait_for(predicate, timeout)

    def wait_for_record(
        self, key: BackendKey, test: Callable[[BackendHealth], bool], timeout: float
    ) -> bool:
        """Wait until the mirrored record of `key` passes `test` (tests and tools)."""

        def holds() -> bool:
            entry = self._entries.get(key)
            return entry is not None and entry.seen and test(entry.view)

        return self.wait_for(holds, timeout)

    # -- inside the lock ---------------------------------------------------------------------

    def _adopt(
        self, entry: _Entry, version: int, record: BackendHealth | None, *, force: bool = False
    ) -> None:
        if version <= entry.version and not force:
            return  # older than (or the same as) the base we have
        entry.version = version
        entry.base = None if record is None else record.copy()
        entry.view = _replay(entry.base, entry.changes)
        entry.seen = entry.seen or record is not None
        self._changed.notify_all()

    def _drop(self, entry: _Entry) -> None:
        if not self._dropped_warned:
            self._dropped_warned = True
            log.warning(
                "shared health store unreachable for %d changes of one backend; dropping "
                "the backlog (the shared record wins once it is heard again)",
                MAX_QUEUED,
            )
        entry.changes = []
        self._settled.notify_all()


def _replay(
    base: BackendHealth | None, changes: tuple[Change, ...] | list[Change]
) -> BackendHealth:
    record = base.copy() if base is not None else BackendHealth()
    for change in changes:
        change(record)
    return record

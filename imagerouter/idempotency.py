"""Request idempotency: a repeat with the same key gets the first call's result, never a
second paid create.

`Router.generate(..., idempotency_key="k")` (and the gateway's `Idempotency-Key` header)
claims the key in the ledger before anything is sent. The claim is an insert-or-get in one
immediate transaction, so of two calls racing with one key (threads, processes, gateway
replicas sharing the ledger) exactly one runs the request; the others find its row and:

- `succeeded`: get its result back (the same images, the same request id);
- `running`: wait for it, polling the ledger with the Router's injected sleep;
- `failed`: the first call failed after a provider may have billed it, so the repeat raises
  `IdempotentRequestFailedError` (`imagerouter resume` collects what was paid). A first call
  that failed with nothing paid gives its key back, and the repeat runs afresh.

The same key with a different request (another prompt, size, input image, ...) is an
`IdempotencyConflictError`, raised before anything is sent. A running claim whose process
died is taken over when nothing was paid for it, and failed as above when something was.

Keys are stored only as a hash of (scope, key): the scope is the gateway API key the call
came with (or "" for the Python API), so two tenants' keys never collide, and neither the
caller's key nor the API key is ever written down. Rows are kept `KEY_TTL` (24 hours) after
the request was made and again after it finished; expired rows are purged as keys are
claimed. A row names the process that claimed it by owner id (`ledger_owners`): a replica on
another host, or a later process that got the same PID, tells from it whether the claim's
process still runs (`owner_alive`), never from the PID alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clock import Sleep
from .errors import (
    IdempotencyConflictError,
    IdempotentRequestFailedError,
    RequestValidationError,
)
from .ledger_owners import (
    OWNER_COLUMNS,
    OwnerSeen,
    clock_sql,
    owner_alive,
    owner_seen,
    this_process,
)
from .ledger_reports import iso
from .result import AttemptRecord, GenerationResult, SavedImage

if TYPE_CHECKING:
    from .ledger import Ledger
    from .provider import LoadedImage
    from .request import ImageRequest

__all__ = [
    "KEY_TTL",
    "MAX_KEY_LENGTH",
    "POLL_INTERVAL_S",
    "IdempotencyKey",
    "IdempotencyStore",
    "KeyState",
    "fingerprint",
    "result_from_dict",
    "run_idempotent",
]

KEY_TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255  # Stripe's and OpenAI's limit for Idempotency-Key
POLL_INTERVAL_S = 0.25  # how often a repeat looks at the ledger while the first call runs

# Claims this process is running now; a `running` row of this process not in here is one
# this process gave up (a cancelled call whose row could not be closed).
_LIVE_CLAIMS: set[str] = set()


class KeyState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class IdempotencyKey:
    """A caller's key within its scope, as the ledger knows it: a hash only."""

    key_hash: str

    @classmethod
    def of(cls, key: object, scope: str = "") -> IdempotencyKey:
        """Check a key (1 to 255 printable ASCII characters) and hash it with its scope."""
        if not isinstance(key, str) or not key:
            raise RequestValidationError("idempotency_key", "must be a non-empty string")
        if len(key) > MAX_KEY_LENGTH:
            raise RequestValidationError(
                "idempotency_key", f"must be at most {MAX_KEY_LENGTH} characters"
            )
        if not all(" " <= ch <= "~" for ch in key):
            raise RequestValidationError(
                "idempotency_key", "must be printable ASCII (letters, digits, - _ . : ...)"
            )
        digest = hashlib.sha256()
        for part in ("imagerouter-idempotency-v1", scope, key):
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "big") + data)
        return cls(digest.hexdigest())

    def __repr__(self) -> str:
        return f"IdempotencyKey({self.key_hash[:12]}...)"


def fingerprint(
    request: ImageRequest,
    inputs: Sequence[LoadedImage | str] = (),
    mask: LoadedImage | str | None = None,
) -> str:
    """A hash of everything that shapes the result: every request field (defaults included,
    so leaving a default out and sending it are the same request) and each input image's
    and mask's bytes (or URL)."""
    fields = request.model_dump(mode="json", exclude={"images", "mask"})
    canonical = {
        "operation": request.operation,
        "fields": fields,
        "images": [_input_digest(item) for item in inputs],
        "mask": None if mask is None else _input_digest(mask),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _input_digest(item: LoadedImage | str) -> str:
    if isinstance(item, str):
        return "url:" + hashlib.sha256(item.encode("utf-8", "surrogatepass")).hexdigest()
    return "sha256:" + hashlib.sha256(item.data).hexdigest()


@dataclass(frozen=True)
class Claim:
    """This call holds the key and runs the request as `request_id`."""

    key: IdempotencyKey
    token: str
    request_id: str


@dataclass(frozen=True)
class KeyRecord:
    """A key's row as another call left it."""

    state: KeyState
    fingerprint: str
    request_id: str
    owner_pid: int
    claim: str
    result: GenerationResult | None
    error: str | None
    owner_id: str | None = None  # None: claimed before m008 (judged by owner_pid alone)
    owner: OwnerSeen | None = None  # the owner row, with the ledger's clock when read


def _utc_now() -> datetime:
    return datetime.now(UTC)


class IdempotencyStore:
    """The `idempotency_keys` table of a ledger (migration m005)."""

    def __init__(self, ledger: Ledger, *, now: Callable[[], datetime] = _utc_now) -> None:
        self._ledger = ledger
        self._now = now

    def claim(
        self, key: IdempotencyKey, fingerprint: str, *, operation: str, request_id: str
    ) -> Claim | KeyRecord:
        """Insert the key as `running` for this call, or return the row already there (one
        immediate transaction). A row for another fingerprint raises the conflict."""
        now = self._now()
        token = secrets.token_hex(16)
        with self._ledger.transaction() as conn:
            conn.execute(
                "DELETE FROM idempotency_keys WHERE expires_at < ? AND state != ?",
                (iso(now), KeyState.RUNNING.value),
            )
            row = conn.execute(_select(conn), (key.key_hash,)).fetchone()
            if row is None:
                owner_id = self._ledger.owners.register(conn)
                conn.execute(
                    "INSERT INTO idempotency_keys (key_hash, fingerprint, state, operation,"
                    " request_id, owner_pid, claim, created_at, updated_at, expires_at,"
                    " owner_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key.key_hash, fingerprint, KeyState.RUNNING.value, operation, request_id,
                     os.getpid(), token, iso(now), iso(now), iso(now + KEY_TTL), owner_id),
                )
                _LIVE_CLAIMS.add(token)
                return Claim(key, token, request_id)
        record = _record(row)
        if record.fingerprint != fingerprint:
            raise IdempotencyConflictError(
                "idempotency_key: this key was already used for a different request (request "
                f"{record.request_id}); use a new key for a new request",
                request_id=record.request_id,
            )
        return record

    def lookup(self, key: IdempotencyKey) -> KeyRecord | None:
        with self._ledger.reading() as conn:
            row = conn.execute(_select(conn), (key.key_hash,)).fetchone()
        return None if row is None else _record(row)

    def succeeded(self, claim: Claim, result: GenerationResult) -> None:
        now = self._now()
        self._finish(
            claim,
            "UPDATE idempotency_keys SET state = ?, result_json = ?, updated_at = ?,"
            " expires_at = ? WHERE key_hash = ? AND claim = ?",
            (KeyState.SUCCEEDED.value, json.dumps(result.to_dict(), sort_keys=True), iso(now),
             iso(now + KEY_TTL), claim.key.key_hash, claim.token),
        )

    def failed(self, claim: Claim, error: str) -> None:
        """The request failed or stopped: keep the key as `failed` if anything may have been
        billed for it (a repeat must not pay again), else give the key back."""
        if self._request_paid(claim.request_id):
            now = self._now()
            self._finish(
                claim,
                "UPDATE idempotency_keys SET state = ?, error = ?, updated_at = ?,"
                " expires_at = ? WHERE key_hash = ? AND claim = ?",
                (KeyState.FAILED.value, error, iso(now), iso(now + KEY_TTL),
                 claim.key.key_hash, claim.token),
            )
        else:
            self._finish(
                claim,
                "DELETE FROM idempotency_keys WHERE key_hash = ? AND claim = ?",
                (claim.key.key_hash, claim.token),
            )

    def abandon(self, key: IdempotencyKey, record: KeyRecord) -> None:
        """Close a `running` row whose process died: as `failed` when its request may have
        been billed, else remove it (so the key can be claimed again)."""
        dead = Claim(key, record.claim, record.request_id)
        self.failed(
            dead,
            f"the process that ran request {record.request_id} stopped before it finished; "
            "`imagerouter resume` collects any paid images",
        )

    def is_orphan(self, record: KeyRecord) -> bool:
        """A `running` row nobody runs any more (its process is gone, or, in this process,
        its call is)."""
        me = this_process()
        if record.owner_id == me.owner_id or (
            record.owner_id is None and record.owner_pid == me.pid
        ):
            return record.claim not in _LIVE_CLAIMS
        return not owner_alive("running", record.owner_pid, record.owner)

    def _finish(self, claim: Claim, sql: str, params: Sequence[Any]) -> None:
        try:
            with self._ledger.transaction() as conn:
                conn.execute(sql, params)
        finally:
            _LIVE_CLAIMS.discard(claim.token)

    def _request_paid(self, request_id: str) -> bool:
        # Mirrors ledger._task_cost: a task counts unless it is known unbilled.
        with self._ledger.reading() as conn:
            row = conn.execute(
                "SELECT 1 FROM tasks WHERE request_id = ?"
                " AND NOT (state IN ('failed', 'canceled', 'not_sent') AND possibly_billed = 0)"
                " AND (provider_task_id IS NOT NULL OR state IN ('submitting', 'unknown'))"
                " LIMIT 1",
                (request_id,),
            ).fetchone()
        return row is not None


def _select(conn: Any) -> str:
    """One key's row, with its owner row and the ledger's clock (for `is_orphan`)."""
    return (
        f"SELECT k.*, {OWNER_COLUMNS}, {clock_sql(conn)} AS ledger_now"  # noqa: S608 - constants only
        " FROM idempotency_keys k LEFT JOIN owners o ON o.id = k.owner_id"
        " WHERE k.key_hash = ?"
    )


def _record(row: Any) -> KeyRecord:
    result_json = row["result_json"]
    return KeyRecord(
        state=KeyState(row["state"]),
        fingerprint=row["fingerprint"],
        request_id=row["request_id"],
        owner_pid=int(row["owner_pid"]),
        claim=row["claim"],
        result=None if result_json is None else result_from_dict(json.loads(result_json)),
        error=row["error"],
        owner_id=row["owner_id"],
        owner=owner_seen(row),
    )


def result_from_dict(data: dict[str, Any]) -> GenerationResult:
    """A GenerationResult back from its `to_dict()`."""
    billed = data.get("billed_usd")
    return GenerationResult(
        request_id=data["request_id"],
        provider=data["provider"],
        model=data["model"],
        operation=data["operation"],
        images=tuple(
            SavedImage(**{**image, "path": Path(image["path"])}) for image in data["images"]
        ),
        cost_usd=Decimal(data["cost_usd"]),
        billed_usd=None if billed is None else Decimal(billed),
        task_ids=tuple(data["task_ids"]),
        attempts=tuple(
            AttemptRecord(**{**attempt, "task_ids": tuple(attempt["task_ids"])})
            for attempt in data["attempts"]
        ),
        params=dict(data.get("params") or {}),
        tier=data.get("tier"),
        notes=tuple(data.get("notes") or ()),
        cached=bool(data.get("cached", False)),
    )


async def run_idempotent(
    store: IdempotencyStore,
    key: IdempotencyKey,
    fingerprint: str,
    *,
    operation: str,
    new_request_id: Callable[[], str],
    run: Callable[[str], Awaitable[GenerationResult]],
    sleep: Sleep,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> GenerationResult:
    """Run `run(request_id)` under `key`, or return (or wait for) the result of the call
    that holds it. `sleep` is awaited between looks at the ledger."""
    while True:
        got = await store._ledger.aio.call(
            store.claim, key, fingerprint, operation=operation, request_id=new_request_id()
        )
        if isinstance(got, Claim):
            return await _run_claimed(store, got, run)
        record: KeyRecord | None = got
        while record is not None:
            if record.fingerprint != fingerprint:
                raise IdempotencyConflictError(
                    "idempotency_key: this key was already used for a different request "
                    f"(request {record.request_id}); use a new key for a new request",
                    request_id=record.request_id,
                )
            if record.state is KeyState.SUCCEEDED:
                assert record.result is not None
                return record.result
            if record.state is KeyState.FAILED:
                raise IdempotentRequestFailedError(
                    f"the first request with this idempotency key ({record.request_id}) "
                    f"failed after a provider may have billed it, so it is not sent again: "
                    f"{record.error}",
                    request_id=record.request_id,
                )
            if store.is_orphan(record):
                await store._ledger.aio.call(store.abandon, key, record)
            else:
                await sleep(poll_interval_s)
            record = await store._ledger.aio.call(store.lookup, key)
        # The key was given back (nothing was paid): claim it again.


async def _run_claimed(
    store: IdempotencyStore, claim: Claim, run: Callable[[str], Awaitable[GenerationResult]]
) -> GenerationResult:
    try:
        result = await run(claim.request_id)
    except asyncio.CancelledError:
        # No awaiting once cancelled: record it here, as routing records the interruption.
        store.failed(claim, f"request {claim.request_id} was interrupted before it finished")
        raise
    except BaseException as exc:
        await store._ledger.aio.call(store.failed, claim, f"{type(exc).__name__}: {exc}")
        raise
    await store._ledger.aio.call(store.succeeded, claim, result)
    return result

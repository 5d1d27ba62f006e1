"""The ledger's schema, as an ordered list of migrations (the llm style).

Each `@migration` function runs once per database, in list order, inside its own
`BEGIN IMMEDIATE` transaction, and is recorded by function name in `_migrations`. Never edit
or reorder a released migration: append a new one. Migrations must use `conn.execute` only
(`executescript` would commit the surrounding transaction halfway).

Conventions in the schema: money is TEXT holding an exact decimal string, timestamps are
ISO-8601 UTC text of one fixed shape (so text order is time order), JSON is TEXT. No column
holds a key, header or any other credential.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

__all__ = ["MIGRATIONS", "Migration", "applied_migrations", "migrate", "migration"]

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Append `fn` to the migration list; names must be unique because they are the record."""
    if any(existing.__name__ == fn.__name__ for existing in MIGRATIONS):
        raise ValueError(f"duplicate migration name {fn.__name__!r}")
    MIGRATIONS.append(fn)
    return fn


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations already applied, in the order they ran."""
    rows = conn.execute("SELECT name FROM _migrations ORDER BY rowid").fetchall()
    return [str(row[0]) for row in rows]


def migrate(conn: sqlite3.Connection, *, now: str) -> list[str]:
    """Apply every pending migration; return the names applied. `conn` must be in autocommit.

    Safe when several processes open a new file at once: each step re-checks the record
    after taking the write lock, so a step another process just applied is skipped.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations ("
        " name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = set(applied_migrations(conn))
    ran: list[str] = []
    for step in MIGRATIONS:
        if step.__name__ in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            already = conn.execute(
                "SELECT 1 FROM _migrations WHERE name = ?", (step.__name__,)
            ).fetchone()
            if already is None:
                step(conn)
                conn.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                    (step.__name__, now),
                )
                ran.append(step.__name__)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return ran


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    # One row per logical request (what the caller asked for), written before anything is paid.
    conn.execute(
        """
        CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            status TEXT NOT NULL,            -- running | served | failed
            operation TEXT NOT NULL,         -- generate | edit
            model TEXT NOT NULL,             -- the model asked for
            tier TEXT,
            prompt TEXT NOT NULL,
            request_json TEXT NOT NULL,      -- the secret-free summary the router passes
            output_dir TEXT NOT NULL,
            quoted_usd TEXT,
            provider TEXT,                   -- who served it (or the last one tried)
            served_model TEXT,
            cost_usd TEXT,
            billed_usd TEXT,
            error TEXT,
            elapsed_s REAL,
            finished_at TEXT
        )
        """
    )
    # One row per try at one backend; a request fails over through several.
    conn.execute(
        """
        CREATE TABLE attempts (
            id TEXT PRIMARY KEY,
            request_id TEXT NOT NULL REFERENCES requests(id),
            attempt_no INTEGER NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            operation TEXT NOT NULL,
            quoted_usd TEXT,
            params_json TEXT NOT NULL,
            accepts_double_charge INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            outcome TEXT,                    -- served | failed (NULL while running)
            accepted TEXT,                   -- yes | no | unknown
            error_type TEXT,
            error TEXT,
            billed_usd TEXT,
            elapsed_s REAL,
            finished_at TEXT
        )
        """
    )
    # One row per paid create call (fan-out makes several per attempt). The row exists in
    # state `submitting` before the create is sent, so a crash can never lose a paid job.
    conn.execute(
        """
        CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            attempt_id TEXT NOT NULL REFERENCES attempts(id),
            request_id TEXT NOT NULL REFERENCES requests(id),
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            operation TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,   -- client-generated replay token, not a credential
            num_images INTEGER NOT NULL,
            quoted_usd TEXT NOT NULL,
            state TEXT NOT NULL,
            provider_task_id TEXT,
            poll_ref TEXT,
            replayed INTEGER NOT NULL DEFAULT 0,
            billed_usd TEXT,
            possibly_billed INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            image_urls_json TEXT NOT NULL DEFAULT '[]',
            urls_expire_at TEXT,
            created_at TEXT NOT NULL,
            accepted_at TEXT,
            finished_at TEXT,
            updated_at TEXT NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE images (
            task_id TEXT NOT NULL REFERENCES tasks(id),
            idx INTEGER NOT NULL,
            request_id TEXT NOT NULL REFERENCES requests(id),
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            source_url TEXT NOT NULL,
            url_expires_at TEXT,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            format TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            saved_at TEXT NOT NULL,
            PRIMARY KEY (task_id, idx)
        )
        """
    )
    # Budget reservations. No foreign key to requests: a budget may be checked before the
    # request row exists, and a reservation must never fail for bookkeeping reasons.
    conn.execute(
        """
        CREATE TABLE reservations (
            id TEXT PRIMARY KEY,
            request_id TEXT NOT NULL,
            amount_usd TEXT NOT NULL,
            state TEXT NOT NULL,             -- open | settled | released
            settled_usd TEXT,
            created_at TEXT NOT NULL,
            closed_at TEXT
        )
        """
    )


@migration
def m002_indexes(conn: sqlite3.Connection) -> None:
    for statement in (
        "CREATE INDEX requests_created ON requests (created_at)",
        "CREATE INDEX attempts_request ON attempts (request_id)",
        "CREATE INDEX tasks_request ON tasks (request_id)",
        "CREATE INDEX tasks_attempt ON tasks (attempt_id)",
        "CREATE INDEX tasks_state ON tasks (state)",
        "CREATE INDEX tasks_latency ON tasks (provider, model, operation, state, finished_at)",
        "CREATE INDEX images_request ON images (request_id)",
        "CREATE INDEX reservations_window ON reservations (state, created_at)",
        "CREATE INDEX reservations_request ON reservations (request_id)",
    ):
        conn.execute(statement)


@migration
def m003_recovery(conn: sqlite3.Connection) -> None:
    # What a possibly-billed task needs to be reconciled later, by `resume`, the gateway's
    # sweeper or a later request: the create exactly as sent (a RunAPI replay must send the
    # same body with the same Idempotency-Key; Runflow looks it up by client_ref), and when
    # it was last looked up. Old rows keep NULL: Runflow ones can still be looked up.
    conn.execute("ALTER TABLE tasks ADD COLUMN spec_json TEXT")
    conn.execute("ALTER TABLE tasks ADD COLUMN checks INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE tasks ADD COLUMN checked_at TEXT")
    # The process running a request, so `resume` can tell a request a live process still
    # runs (leave it alone) from one whose process was killed (close it). Status values now
    # include `interrupted` (SIGINT, cancellation, or a process that died mid-request).
    conn.execute("ALTER TABLE requests ADD COLUMN owner_pid INTEGER")
    # The attempt a reservation paid for, so its spend can be settled from that attempt's
    # tasks after a kill.
    conn.execute("ALTER TABLE reservations ADD COLUMN attempt_id TEXT")


@migration
def m004_mcp_client(conn: sqlite3.Connection) -> None:
    # `imagerouter mcp`: the MCP client (its handshake's clientInfo.name, as a slug) a request
    # was made for; NULL for every other entry point. Its spend is also recorded under the
    # budget scopes `mcp:*` and `mcp:<client>` (the reservations' scopes).
    conn.execute("ALTER TABLE requests ADD COLUMN mcp_client TEXT")


@migration
def m005_idempotency_keys(conn: sqlite3.Connection) -> None:
    # Request idempotency (imagerouter/idempotency.py). A key is stored only as a hash of
    # (scope, key), so neither the caller's key nor a gateway API key (the scope) is here.
    # `fingerprint` is a hash of everything that shapes the image; `result_json` the served
    # result a repeat gets back. Rows live at least 24 hours (`expires_at`).
    conn.execute(
        """
        CREATE TABLE idempotency_keys (
            key_hash TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            state TEXT NOT NULL,             -- running | succeeded | failed
            operation TEXT NOT NULL,
            request_id TEXT NOT NULL,        -- the first call's request (requests.id)
            owner_pid INTEGER NOT NULL,
            claim TEXT NOT NULL,             -- random token of the call that runs it
            result_json TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at)")


@migration
def m007_result_cache(conn: sqlite3.Connection) -> None:
    # The opt-in result cache (imagerouter/cache.py): one row per served request whose images
    # may answer an identical later request at $0. `fingerprint` hashes everything that shapes
    # the image; `result_json` is the served result (image paths and their sha256).
    conn.execute(
        """
        CREATE TABLE result_cache (
            fingerprint TEXT PRIMARY KEY,
            request_id TEXT NOT NULL,        -- the request that paid for the images
            result_json TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX result_cache_expiry ON result_cache (expires_at)")
    # A request answered from the cache: `cached` = 1, `cache_of` the request that paid.
    conn.execute("ALTER TABLE requests ADD COLUMN cached INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE requests ADD COLUMN cache_of TEXT")


@migration
def m006_key_scopes(conn: sqlite3.Connection) -> None:
    # Per-key budgets (issue 12): a reservation may also count against budget scopes
    # ("key:team-a", "mcp:<client>"), one row per scope; and each request records the
    # configured name of the gateway key it came with (a name, never the key or its hash).
    conn.execute(
        """
        CREATE TABLE reservation_scopes (
            reservation_id TEXT NOT NULL,
            scope TEXT NOT NULL,
            PRIMARY KEY (scope, reservation_id)
        )
        """
    )
    conn.execute("ALTER TABLE requests ADD COLUMN key_name TEXT")


@migration
def m009_gateway_jobs(conn: sqlite3.Connection) -> None:
    # Gateway jobs and file ids (gateway/jobs.py, gateway/files.py), so a job created on one
    # replica is read, and its images fetched, from any other. `summary_json` is the job's
    # summary without images (never input bytes, prompts or keys); paths are where the
    # images were saved under output.dir, which the replicas share.
    conn.execute(
        """
        CREATE TABLE gateway_jobs (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            response_format TEXT NOT NULL,
            summary_json TEXT NOT NULL,
            updated_at REAL NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE gateway_files (
            id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL,
            path TEXT NOT NULL,
            format TEXT NOT NULL,
            position INTEGER NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX gateway_files_job ON gateway_files (job_id)")


@migration
def m008_owners(conn: sqlite3.Connection) -> None:
    # Who runs a request (imagerouter/ledger_owners.py): one row per process that writes
    # requests, renewed by a heartbeat, so a replica on another host (where a PID means
    # nothing) or after a restart (PIDs are reused) can tell a live owner from a dead one.
    # `seen_at` is epoch seconds by the ledger's own clock (PostgreSQL's, for a fleet), the
    # one timestamp here compared by arithmetic. `id` is a random token; no credential here.
    conn.execute(
        """
        CREATE TABLE owners (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,              -- hostname, for people
            host_key TEXT NOT NULL,          -- boot id and PID namespace: where `pid` means it
            pid INTEGER NOT NULL,
            proc_start TEXT,                 -- the kernel's start time of `pid` (Linux)
            started_at TEXT NOT NULL,
            seen_at REAL NOT NULL            -- the last heartbeat, ledger clock, epoch s
        )
        """
    )
    # Rows written before this keep NULL and are judged by `owner_pid` alone.
    conn.execute("ALTER TABLE requests ADD COLUMN owner_id TEXT")
    conn.execute("ALTER TABLE idempotency_keys ADD COLUMN owner_id TEXT")


@migration
def m010_gateway_job_links(conn: sqlite3.Connection) -> None:
    # A gateway job names the ledger request it runs as and the process (owner row) running
    # it, so the sweeper can end the job of a replica killed mid-job from what its request
    # became (gateway/jobs.py); `created_at` lists every replica's jobs newest first.
    conn.execute("ALTER TABLE gateway_jobs ADD COLUMN request_id TEXT")
    conn.execute("ALTER TABLE gateway_jobs ADD COLUMN owner_id TEXT")
    conn.execute("ALTER TABLE gateway_jobs ADD COLUMN created_at REAL")
    # Older rows: the request id and creation time their summary holds (in Python, so the
    # one SQL text serves both backends; there are few such rows).
    rows = conn.execute("SELECT id, summary_json, updated_at FROM gateway_jobs").fetchall()
    for job_id, summary_json, updated_at in rows:
        try:
            summary = json.loads(summary_json)
        except ValueError:
            summary = {}
        request_id = summary.get("request_id") if isinstance(summary, dict) else None
        created = summary.get("created") if isinstance(summary, dict) else None
        conn.execute(
            "UPDATE gateway_jobs SET request_id = ?, created_at = ? WHERE id = ?",
            (request_id if isinstance(request_id, str) else None,
             float(created) if isinstance(created, int | float) else float(updated_at), job_id),
        )
    conn.execute("CREATE INDEX gateway_jobs_request ON gateway_jobs (request_id)")
    conn.execute("CREATE INDEX gateway_jobs_created ON gateway_jobs (created_at)")
    conn.execute("CREATE INDEX gateway_jobs_status ON gateway_jobs (status)")

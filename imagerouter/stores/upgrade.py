"""`imagerouter db upgrade`'s work: apply every pending migration to the ledger at a URL.

Both backends run the same migration list (imagerouter/migrations.py): SQLite as written,
PostgreSQL through the statement translation in `postgres.py`. Opening a ledger migrates it
already; this reports what was applied (the names recorded before and after).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..migrations import MIGRATIONS, applied_migrations
from . import is_postgres_url, open_ledger, sqlite_path

__all__ = ["Upgrade", "upgrade"]


@dataclass(frozen=True)
class Upgrade:
    backend: str  # sqlite | postgresql
    applied: tuple[str, ...]  # by this run, in order
    migrations: tuple[str, ...]  # every migration the ledger now records

    @property
    def up_to_date(self) -> bool:
        return set(m.__name__ for m in MIGRATIONS) <= set(self.migrations)


def _recorded(url: str) -> list[str]:
    """The migrations recorded before the upgrade ([] for a new ledger)."""
    if is_postgres_url(url):
        import psycopg

        from .postgres import conninfo, unavailable

        try:
            with psycopg.connect(conninfo(url), autocommit=True) as conn:
                rows = conn.execute("SELECT name FROM _migrations").fetchall()
        except psycopg.errors.UndefinedTable:
            return []
        except psycopg.OperationalError as exc:
            raise unavailable(url, exc) from None
        except psycopg.Error as exc:
            raise sqlite3.OperationalError(f"postgresql: {exc}") from None
        return [str(row[0]) for row in rows]
    path = sqlite_path(url)
    if path is None or not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        try:
            return applied_migrations(conn)
        except sqlite3.OperationalError:  # a file without the table yet
            return []


def upgrade(url: str) -> Upgrade:
    before = set(_recorded(url))
    with open_ledger(url) as ledger, ledger.reading() as conn:
        after = applied_migrations(conn)
    return Upgrade(
        backend="postgresql" if is_postgres_url(url) else "sqlite",
        applied=tuple(name for name in after if name not in before),
        migrations=tuple(after),
    )

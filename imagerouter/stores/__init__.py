"""Stores behind interfaces: the ledger's backends and its async API.

- `open_ledger(url)`: the ledger named by `ledger.url` (`sqlite:///path` or a path: the
  SQLite `Ledger`; `postgresql://...`: `PgLedger`). Both have the same sync API (CLI reports,
  Budget) and, as `ledger.aio`, the same async one (`AsyncLedger`: one writer thread whose
  queue is committed in batches).
- `ledger_url(settings)`: the URL a config's ledger section names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from .aio import AsyncLedger, LedgerClosedError

if TYPE_CHECKING:
    from ..config import LedgerSettings
    from ..ledger import Ledger

__all__ = [
    "AsyncLedger",
    "LedgerClosedError",
    "is_postgres_url",
    "ledger_url",
    "open_ledger",
    "redact_url",
    "sqlite_path",
]

_PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    return url.startswith(_PG_SCHEMES)


def sqlite_path(url: str) -> Path | None:
    """The file a `sqlite:///path` URL (or a bare path) names; None for other schemes."""
    if url.startswith("sqlite:///"):
        # Absolute, as file:///path is (sqlite:////path, SQLAlchemy's form, means the same).
        return Path("/" + url[len("sqlite:///") :].lstrip("/"))
    if url.startswith("sqlite://"):
        return Path(url[len("sqlite://") :]).expanduser()  # sqlite://relative/file.db
    if "://" in url:
        return None
    return Path(url).expanduser()


def ledger_url(settings: LedgerSettings) -> str:
    """`ledger.url`, else `sqlite:///` + `ledger.path` (default: the user's ledger file)."""
    from ..paths import default_ledger_path

    url = getattr(settings, "url", None)
    if url:
        return str(url)
    return f"sqlite://{settings.path or default_ledger_path()}"  # sqlite:///abs or sqlite://rel


def open_ledger(url: str) -> Ledger:
    """The ledger `url` names, opened and migrated."""
    if is_postgres_url(url):
        try:
            from .postgres import PgLedger
        except ImportError:
            from ..errors import ConfigError

            raise ConfigError(
                "a postgresql:// ledger needs psycopg 3: pip install 'imagerouter-core[postgres]'",
                key="ledger.url",
            ) from None
        return PgLedger(url)
    path = sqlite_path(url)
    if path is None:
        raise ValueError(
            f"ledger.url: {url.split('://', 1)[0]}:// is not a ledger backend; use "
            "sqlite:///path or postgresql://..."
        )
    from ..ledger import Ledger

    return Ledger(path)


def redact_url(url: str) -> str:
    """The URL without its password (for reprs, logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + host))

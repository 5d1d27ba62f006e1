"""`shared.url`: which store holds the state replicas share (health, rate windows, nudges).

- `memory` (default): this process only; nothing to run.
- `sqlite` (a file under the imagerouter home, `shared.db`) or `sqlite:///path`: one
  machine; every CLI command and `serve` process sees the same health.
- `redis://host:port/db` (or `rediss://`): many machines (stores/shared_redis.py).

Records hold times, so a shared store needs a clock that means the same in every process:
`health_clock` gives wall time for shared stores and leaves an injected clock alone.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..clock import SYSTEM_CLOCK, Clock
from ..health_store import HealthStore, MemoryHealthStore

__all__ = [
    "SHARED_SCHEMES",
    "health_clock",
    "is_memory",
    "is_redis",
    "open_health_store",
    "shared_sqlite_path",
]

SHARED_SCHEMES = ("memory", "sqlite", "redis://", "rediss://")


def is_memory(url: str) -> bool:
    return url == "memory"


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def shared_sqlite_path(url: str) -> Path | None:
    """The file a `sqlite` / `sqlite:///path` shared URL names; None for other schemes."""
    if url == "sqlite":
        from ..paths import imagerouter_home

        return imagerouter_home() / "shared.db"
    if url.startswith("sqlite:///"):
        return Path("/" + url[len("sqlite:///") :].lstrip("/"))
    if url.startswith("sqlite://"):
        return Path(url[len("sqlite://") :]).expanduser()
    return None


def open_health_store(url: str, *, prefix: str | None = None) -> HealthStore:
    """The health store `shared.url` names (a Redis `prefix` overrides the default)."""
    if is_memory(url):
        return MemoryHealthStore()
    if is_redis(url):
        try:
            from .shared_redis import DEFAULT_PREFIX, RedisHealthStore
        except ImportError:
            from ..errors import ConfigError

            raise ConfigError(
                "a redis:// shared store needs redis-py: pip install 'imagerouter-core[redis]'",
                key="shared.url",
            ) from None

        return RedisHealthStore(url, prefix=prefix if prefix is not None else DEFAULT_PREFIX)
    path = shared_sqlite_path(url)
    if path is None:
        raise ValueError("shared.url: use memory, sqlite, sqlite:///path or redis://host:port")
    from .shared_sqlite import SqliteHealthStore

    return SqliteHealthStore(path)


def health_clock(url: str, clock: Clock) -> Clock:
    """Wall time for a shared store, unless a test injected its own clock."""
    if not is_memory(url) and clock is SYSTEM_CLOCK:
        return time.time
    return clock

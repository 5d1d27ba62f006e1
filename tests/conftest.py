"""Shared fixtures: an isolated IMAGEROUTER_HOME, both emulators on loopback, and a Router
factory pointed at them with millisecond latencies."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagerouter import Router
from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.plugins import Plugins

KEY_VARS = (
    "RUNAPI_API_KEY",
    "RUNFLOW_API_KEY",
    "RUNAPI_BASE_URL",
    "RUNFLOW_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
)
# The shared fixtures emulate the two aggregators the older tests were written for; the
# openai backend's tests (tests/test_openai_*.py) start every installed emulator.
AGGREGATORS = ["runapi", "runflow"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("IMAGEROUTER_HOME", str(home))
    monkeypatch.delenv("IMAGEROUTER_CONFIG", raising=False)
    monkeypatch.delenv("IMAGEROUTER_LOAD_PLUGINS", raising=False)
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture(scope="session")
def plugins() -> Plugins:
    return Plugins.load()


async def fast_sleep(seconds: float) -> None:
    """Waits scaled down to at most 5 ms: polling and backoff stay real but quick."""
    await asyncio.sleep(min(seconds, 0.005))


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def accepted_tasks(db: Path) -> int:
    """How many tasks in the ledger file at `db` a provider has accepted (0 before it exists),
    read over a connection of its own, as a watcher in another process would."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM tasks WHERE provider_task_id IS NOT NULL"
            ).fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0])


def base_config(tmp_path: Path) -> dict[str, Any]:
    fast = {"poll_interval": 0.01, "poll_deadline": 5, "timeout": 5}
    return {
        "providers": {"runapi": dict(fast), "runflow": dict(fast)},
        "output": {"dir": str(tmp_path / "out")},
        "ledger": {"path": str(tmp_path / "ledger.db")},
    }


@pytest.fixture
def emulators(plugins: Plugins) -> Iterator[Emulators]:
    with Emulators.start(plugins, names=AGGREGATORS, latency="fixed:0.02", seed=7) as running:
        yield running


MakeRouter = Callable[..., Router]


@pytest.fixture
def make_router(emulators: Emulators, plugins: Plugins, tmp_path: Path) -> Iterator[MakeRouter]:
    made: list[Router] = []

    def make(
        config: dict[str, Any] | None = None,
        *,
        base_urls: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Router:
        """A Router on the emulators; `base_urls` re-points providers afterwards (e.g. at a
        closed port)."""
        data = deep_merge(base_config(tmp_path), config or {})
        cfg = emulators.configure(load_config(data, known_providers=plugins.providers()))
        if base_urls:
            providers = dict(cfg.providers)
            for name, url in base_urls.items():
                providers[name] = providers[name].model_copy(update={"base_url": url})
            cfg = cfg.model_copy(update={"providers": providers})
        kwargs.setdefault("sleep", fast_sleep)
        router = Router(cfg, plugins=plugins, **kwargs)
        made.append(router)
        return router

    yield make
    for router in made:
        router.close()


@pytest.fixture
def input_png(tmp_path: Path) -> Path:
    path = tmp_path / "input.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path

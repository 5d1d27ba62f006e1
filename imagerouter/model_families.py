"""The model families requests may name, as the provider plugins declare them.

The core knows no model list of its own: each provider's capability table declares the
families it serves (`Provider.model_families`), so a plugin can bring a model the core has
never heard of. `MODELS` is a live, ordered view of every family declared so far; on first
use it asks the installed plugins (the `imagerouter` entry points), and a Router declares
its own providers' families (with the user's capability overrides) when it is built.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

__all__ = ["MODELS", "ModelFamilies", "ModelName", "declare_model_families"]

ModelName = str
"""A model family (`gpt-image-2`): any name a provider plugin declares."""


class ModelFamilies(Sequence[str]):
    """Every declared family without duplicates: those more providers serve first (the
    common families lead a list of choices), then in declaration order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: list[str] = []
        self._served_by: dict[str, set[str]] = {}
        self._loaded = False

    def declare(self, names: Iterable[str], *, provider: str = "") -> None:
        with self._lock:
            for name in names:
                if not isinstance(name, str) or not name:
                    continue
                if name not in self._names:
                    self._names.append(name)
                self._served_by.setdefault(name, set()).add(provider)
            order = {name: index for index, name in enumerate(self._names)}
            self._names.sort(key=lambda name: (-len(self._served_by[name]), order[name]))

    def _ensure_loaded(self) -> None:
        # The installed plugins are asked once, lazily: importing the core loads no plugin.
        if self._loaded:
            return
        self._loaded = True
        from .plugins import Plugins

        try:
            providers = Plugins.load().providers()
        except Exception:  # a broken plugin is reported where plugins are used, not here
            return
        for provider in providers.values():
            try:
                families = provider.model_families(provider.capabilities())
                self.declare(families, provider=provider.name)
            except Exception:  # noqa: S112 - its offers will say what is wrong
                continue

    def _snapshot(self) -> list[str]:
        self._ensure_loaded()
        with self._lock:
            return list(self._names)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._snapshot()[index]

    def __len__(self) -> int:
        return len(self._snapshot())

    def __iter__(self) -> Iterator[str]:
        return iter(self._snapshot())

    def __contains__(self, name: object) -> bool:
        return name in self._snapshot()

    def __repr__(self) -> str:
        return f"ModelFamilies({self._snapshot()!r})"


MODELS = ModelFamilies()


def declare_model_families(names: Iterable[str], *, provider: str = "") -> None:
    """Add the families `provider` serves (after the user's capability overrides) to
    `MODELS`."""
    MODELS.declare(names, provider=provider)

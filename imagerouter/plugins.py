"""Plugin loading: one plugin manager per Router, entry points loaded one at a time.

A plugin that fails to import, or whose `register_providers` raises, is recorded in
`Plugins.errors` (and shown by `imagerouter providers`) instead of taking the host down.
`IMAGEROUTER_LOAD_PLUGINS` restricts loading to a comma-separated list of entry-point or
distribution names; set it to an empty string to load none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .provider import Provider

__all__ = ["LOAD_PLUGINS_ENV", "PluginError", "PluginInfo", "Plugins"]

log = logging.getLogger("imagerouter.plugins")

LOAD_PLUGINS_ENV = "IMAGEROUTER_LOAD_PLUGINS"
ENTRY_POINT_GROUP = hookspecs.PROJECT


@dataclass(frozen=True)
class PluginError:
    """A plugin that could not be loaded or whose hook failed."""

    plugin: str
    stage: str  # "import" or "register_providers"
    error: str


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


@dataclass
class Plugins:
    """A plugin manager and what it loaded. Build one per Router with `Plugins.load()`."""

    manager: pluggy.PluginManager
    errors: list[PluginError] = field(default_factory=list)
    _providers: dict[str, Provider] | None = None
    _dists: dict[str, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def load(
        cls, *, entry_points_too: bool = True, extra: Iterable[object] = ()
    ) -> Plugins:
        manager = pluggy.PluginManager(hookspecs.PROJECT)
        manager.add_hookspecs(hookspecs)
        plugins = cls(manager)
        if entry_points_too:
            plugins._load_entry_points()
        for plugin in extra:
            plugins.register(plugin)
        return plugins

    def _load_entry_points(self) -> None:
        allowed = _allowed_names()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist_name = ep.dist.name if ep.dist else None
            if allowed is not None and ep.name not in allowed and dist_name not in allowed:
                continue
            if self.manager.get_plugin(ep.name) is not None:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the host down
                self._fail(ep.name, "import", exc)
                continue
            try:
                self.manager.register(module, name=ep.name)
                self._record_dist(ep, module)
            except Exception as exc:
                self._fail(ep.name, "import", exc)

    def _record_dist(self, ep: EntryPoint, module: object) -> None:
        if ep.dist is not None:
            self._dists[ep.name] = (ep.dist.name, ep.dist.version)

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register an in-process plugin (a module or an object with @hookimpl methods)."""
        self._providers = None
        return self.manager.register(plugin, name=name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> None:
        self._providers = None
        self.manager.unregister(plugin=plugin, name=name)

    def providers(self) -> dict[str, Provider]:
        """Every registered provider by name. A plugin whose hook raises is recorded."""
        if self._providers is not None:
            return self._providers
        found: dict[str, Provider] = {}
        self.errors = [e for e in self.errors if e.stage != "register_providers"]
        caller = self.manager.hook.register_providers
        for impl in caller.get_hookimpls():
            plugin_name = self.manager.get_name(impl.plugin) or repr(impl.plugin)

            def register(provider: Provider, _plugin: str = plugin_name) -> None:
                if not isinstance(provider, Provider):
                    raise TypeError(f"register() takes a Provider, not {provider!r}")
                if provider.name in found:
                    raise ValueError(f"provider name {provider.name!r} is already registered")
                found[provider.name] = provider

            try:
                impl.function(register=register)
            except Exception as exc:
                self._fail(plugin_name, "register_providers", exc)
        self._providers = found
        return found

    def info(self) -> list[PluginInfo]:
        out = []
        for name, plugin in self.manager.list_name_plugin():
            if plugin is None:
                continue
            dist_name, dist_version = self._dists.get(name, (None, None))
            hooks = tuple(sorted(h.name for h in self.manager.get_hookcallers(plugin) or []))
            out.append(
                PluginInfo(name=name, distribution=dist_name, version=dist_version, hooks=hooks)
            )
        return out

    def call_event_hook(self, hook: str, **kwargs: Any) -> None:
        """Call an observability hook; one failing implementation never stops the others."""
        caller = getattr(self.manager.hook, hook)
        for impl in caller.get_hookimpls():
            try:
                impl.function(**kwargs)
            except Exception:
                log.exception("plugin %s failed in %s", self.manager.get_name(impl.plugin), hook)

    def _fail(self, plugin: str, stage: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.warning("plugin %s failed at %s: %s", plugin, stage, message)
        self.errors.append(PluginError(plugin=plugin, stage=stage, error=message))


def _allowed_names() -> set[str] | None:
    raw = os.environ.get(LOAD_PLUGINS_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


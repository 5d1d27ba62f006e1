"""The plugin contract: every hook a plugin may implement.

Providers register through `register_providers`, built-in and third-party alike. The event
hooks let users send every attempt and result to their own logging or metrics; an exception
in one of them is logged and never breaks a paid job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

if TYPE_CHECKING:
    from .events import AttemptEvent, ResultEvent
    from .provider import Provider

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "imagerouter"
_F = TypeVar("_F", bound=Callable[..., Any])

hookspec: Callable[[_F], _F] = pluggy.HookspecMarker(PROJECT)
hookimpl: Callable[[_F], _F] = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_providers(register: Callable[[Provider], None]) -> None:
    """Register provider backends: call `register(provider)` once for each."""


@hookspec
def on_attempt(event: AttemptEvent) -> None:
    """Called after each attempt at a provider (submitted, failed, served)."""


@hookspec
def on_result(event: ResultEvent) -> None:
    """Called once per logical request with its final outcome."""

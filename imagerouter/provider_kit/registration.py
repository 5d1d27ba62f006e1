"""`provider_hook`: a plugin's `register_providers` hook in one line.

Every provider plugin registers its providers the same way; writing that hook out in each
plugin is the same six lines again and again, so the kit builds it:

    register_providers = provider_hook(AcmeProvider)
"""

from __future__ import annotations

from collections.abc import Callable

from imagerouter.hookspecs import hookimpl
from imagerouter.provider import Provider

__all__ = ["RegisterHook", "provider_hook"]

RegisterHook = Callable[[Callable[[Provider], None]], None]


def provider_hook(*factories: Callable[[], Provider]) -> RegisterHook:
    """The `register_providers` hook implementation that registers one provider built by
    each factory (usually the Provider class itself). Bind it to the module-level name
    `register_providers`: pluggy finds hooks by that name."""

    @hookimpl
    def register_providers(register: Callable[[Provider], None]) -> None:
        for factory in factories:
            register(factory())

    return register_providers

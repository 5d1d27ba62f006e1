"""imagerouter-runapi: the RunAPI (runapi.ai) provider plugin for imagerouter.

Installed, it registers `RunAPIProvider` through the `imagerouter` entry point group, the
same way any third-party provider plugin would.
"""

from __future__ import annotations

from collections.abc import Callable

from imagerouter.hookspecs import hookimpl
from imagerouter.provider import Provider

from .client import RunAPIClient
from .provider import RunAPIProvider

__all__ = ["RunAPIClient", "RunAPIProvider", "register_providers"]


@hookimpl
def register_providers(register: Callable[[Provider], None]) -> None:
    register(RunAPIProvider())

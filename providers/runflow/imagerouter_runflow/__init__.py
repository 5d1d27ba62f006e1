"""imagerouter-runflow: the Runflow (runflow.io) provider plugin for imagerouter.

Loaded through the `imagerouter` entry point group; registers one `RunflowProvider`.
"""

from __future__ import annotations

from collections.abc import Callable

from imagerouter.hookspecs import hookimpl
from imagerouter.provider import Provider

from .provider import RunflowProvider

__all__ = ["RunflowProvider", "register_providers"]


@hookimpl
def register_providers(register: Callable[[Provider], None]) -> None:
    register(RunflowProvider())

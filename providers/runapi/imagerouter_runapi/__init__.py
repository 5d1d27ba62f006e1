"""imagerouter-runapi: the RunAPI (runapi.ai) provider plugin for imagerouter.

Installed, it registers `RunAPIProvider` through the `imagerouter` entry point group, the
same way any third-party provider plugin would.
"""

from __future__ import annotations

from imagerouter.provider_kit import RegisterHook, provider_hook

from .client import RunAPIClient
from .provider import RunAPIProvider

__all__ = ["RunAPIClient", "RunAPIProvider", "register_providers"]

register_providers: RegisterHook = provider_hook(RunAPIProvider)

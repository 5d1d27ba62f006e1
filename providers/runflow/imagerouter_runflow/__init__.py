"""imagerouter-runflow: the Runflow (runflow.io) provider plugin for imagerouter.

Loaded through the `imagerouter` entry point group; registers one `RunflowProvider`.
"""

from __future__ import annotations

from imagerouter.provider_kit import RegisterHook, provider_hook

from .provider import RunflowProvider

__all__ = ["RunflowProvider", "register_providers"]

register_providers: RegisterHook = provider_hook(RunflowProvider)

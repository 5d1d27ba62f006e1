"""imagerouter-openai: OpenAI's Images API as an imagerouter provider plugin.

Installed, it registers `OpenAIProvider` through the `imagerouter` entry point group, the
same way any third-party provider plugin would.
"""

from __future__ import annotations

from imagerouter.provider_kit import RegisterHook, provider_hook

from .client import OpenAIClient
from .provider import OpenAIProvider

__all__ = ["OpenAIClient", "OpenAIProvider", "register_providers"]

register_providers: RegisterHook = provider_hook(OpenAIProvider)

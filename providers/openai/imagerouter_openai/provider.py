"""`OpenAIProvider`: OpenAI's own Images API as an imagerouter provider.

A pure description (token prices, capabilities, offers) plus factories for the wire client
and the emulator. The first backend that is nothing like the aggregators: synchronous (the
POST is the job), billed in tokens, streaming partial images.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from imagerouter.pricing import PriceTable
from imagerouter.provider import Provider, ProviderSettings

from .client import OpenAIClient
from .mapping import build_offer
from .tokens import estimate_text_tokens

if TYPE_CHECKING:
    from imagerouter.emulation import EmulatorApp, EmulatorOptions
    from imagerouter.offers import Offer
    from imagerouter.request import ImageRequest

__all__ = ["PACKAGE", "OpenAIProvider"]

PACKAGE = "imagerouter_openai"
# OpenAI's SDK default: a high-quality image can take minutes, and a read that gives up
# early loses an image that is billed anyway. `providers.openai.timeout` overrides it.
DEFAULT_TIMEOUT_S = 600.0


def _load(name: str) -> Any:
    from importlib import resources

    return yaml.safe_load(resources.files(PACKAGE).joinpath(name).read_text(encoding="utf-8"))


class OpenAIProvider(Provider):
    """GPT Image at the source, through OpenAI's /v1/images endpoints."""

    name = "openai"
    title = "OpenAI"
    key_env_var = "OPENAI_API_KEY"
    base_url_env_var = "OPENAI_BASE_URL"  # OpenAI's own variable; it includes the /v1
    default_base_url = "https://api.openai.com/v1"
    # No idempotency key exists for images, and no job can be looked up: a lost answer is
    # "possibly billed" and is never sent again nor failed over without the user's opt-in.
    idempotent_creates = False
    can_find_by_task_id = False
    # Off until OPENAI_API_KEY (or providers.openai.api_key) is set, and under --emulate:
    # aggregator users who never signed up with OpenAI are not routed to it.
    needs_key_to_route = True
    docs_url = "https://developers.openai.com/api/reference/resources/images"
    # Images arrive inline as base64: nothing is ever downloaded from OpenAI.
    download_hosts = ()

    def price_table(self) -> PriceTable:
        return PriceTable.from_package(PACKAGE)

    def capabilities(self) -> Mapping[str, Any]:
        data = _load("capabilities.yaml")
        return data if isinstance(data, dict) else {}

    def offers(
        self,
        request: ImageRequest,
        *,
        prices: PriceTable,
        capabilities: Mapping[str, Any],
    ) -> list[Offer]:
        return [build_offer(request, prices=prices, capabilities=capabilities)]

    def prompt_key(self, prompt: str, capabilities: Mapping[str, Any]) -> Hashable:
        # The prompt's input tokens are part of the price.
        return estimate_text_tokens(prompt)

    def client(self, settings: ProviderSettings, http: httpx.AsyncClient) -> OpenAIClient:
        timeout = settings.timeout if "timeout" in settings.model_fields_set else DEFAULT_TIMEOUT_S
        return OpenAIClient(
            self,
            api_key=settings.resolve_api_key(self),
            base_url=settings.resolve_base_url(self),
            http=http,
            timeout=timeout,
            prices=self.price_table().with_overrides(settings.prices),
            organization=os.environ.get("OPENAI_ORG_ID") or None,
            project=os.environ.get("OPENAI_PROJECT_ID") or None,
        )

    def emulator(self, options: EmulatorOptions) -> EmulatorApp:
        from .emulator import build_emulator

        return build_emulator(self, options)

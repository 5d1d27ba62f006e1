"""`RunAPIProvider`: RunAPI (runapi.ai) as an imagerouter provider.

A pure description (prices, capabilities, offers) plus factories for the wire client and the
emulator. See mapping.py for how a request becomes RunAPI's fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from imagerouter.pricing import PriceTable
from imagerouter.provider import Provider, ProviderSettings

from .capabilities import PACKAGE, RunAPICapabilities, shipped_capabilities
from .client import RunAPIClient
from .mapping import runapi_offer

if TYPE_CHECKING:
    from imagerouter.emulation import EmulatorApp, EmulatorOptions
    from imagerouter.live_prices import FetchedPrices
    from imagerouter.offers import Offer
    from imagerouter.request import ImageRequest

__all__ = ["RunAPIProvider"]


class RunAPIProvider(Provider):
    """GPT Image 2 and GPT Image 1.5 through RunAPI's task API."""

    name = "runapi"
    title = "RunAPI"
    key_env_var = "RUNAPI_API_KEY"
    base_url_env_var = "RUNAPI_BASE_URL"
    default_base_url = "https://runapi.ai"
    # RunAPI replays the original task for a reused Idempotency-Key (`task_replayed: true`).
    idempotent_creates = True
    # There is no documented lookup by X-Client-Request-Id.
    can_find_by_task_id = False
    # How long RunAPI keeps an Idempotency-Key is not documented; a day is the shortest
    # retention the idempotency designs we know publish (Stripe), so a lost create is only
    # replayed within that: later, a replay might make a second task.
    reconcile_window_s = 24 * 3600.0
    docs_url = "https://runapi.ai/models/gpt-image-2"
    # Result images are served from file.runapi.ai ("images":[{"url":"https://file.runapi.ai/…"}]
    # in the SDKs' mocks); any subdomain of RunAPI's own domain is trusted as well.
    download_hosts = ("runapi.ai", "*.runapi.ai")
    # RunAPI's callback signature scheme is not documented: with a secret set, a hex
    # HMAC-SHA256 of the raw body (optionally `sha256=`-prefixed) is accepted in any of these
    # headers; if real deliveries fail that check, leave the secret unset (callbacks are
    # only hints). The task id is the task JSON's `id`.
    callback_signature_headers = (
        "x-runapi-signature", "runapi-signature", "x-signature", "x-webhook-signature"
    )
    callback_task_id_fields = ("id", "task_id")

    def price_table(self) -> PriceTable:
        return PriceTable.from_package(PACKAGE)

    def capabilities(self) -> Mapping[str, Any]:
        return shipped_capabilities()

    def offers(
        self, request: ImageRequest, *, prices: PriceTable, capabilities: Mapping[str, Any]
    ) -> list[Offer]:
        caps = RunAPICapabilities.from_mapping(capabilities)
        return [runapi_offer(request, prices=prices, capabilities=caps)]

    def client(self, settings: ProviderSettings, http: httpx.AsyncClient) -> RunAPIClient:
        return RunAPIClient(
            self,
            api_key=settings.resolve_api_key(self),
            base_url=settings.resolve_base_url(self),
            http=http,
            timeout=settings.timeout,
        )

    async def fetch_prices(
        self,
        settings: ProviderSettings,
        http: httpx.AsyncClient,
        *,
        etag: str | None = None,
    ) -> FetchedPrices:
        # GET /api/v1/price_schedules (price_schedules.py): free, public, no key sent.
        from .price_schedules import fetch_price_schedules

        return await fetch_price_schedules(
            settings.resolve_base_url(self),
            http,
            self.price_table(),
            timeout_s=settings.timeout,
            etag=etag,
        )

    def emulator(self, options: EmulatorOptions) -> EmulatorApp:
        from .emulator import build_emulator

        return build_emulator(self, options)

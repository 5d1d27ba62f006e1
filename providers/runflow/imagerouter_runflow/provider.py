"""The Runflow provider: what it offers for a request, its prices, limits, client and emulator."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import yaml

from imagerouter.offers import Offer
from imagerouter.pricing import PriceTable
from imagerouter.provider import Provider, ProviderSettings
from imagerouter.request import ImageRequest

from .mapping import PROVIDER, build_offer, merged_capabilities, prompt_fits_15

if TYPE_CHECKING:
    from imagerouter.emulation import EmulatorApp, EmulatorOptions

    from .client import RunflowClient

__all__ = ["RunflowProvider"]

_PACKAGE = "imagerouter_runflow"


class RunflowProvider(Provider):
    """Runflow (runflow.io): GPT Image 2 and 1.5 through `POST /v1/models/{id}/runs`.

    Creates are not idempotent (Runflow has no idempotency key), but every run carries our
    task id as `client_ref`, so an unknown create can be looked up again (`find`)."""

    name: ClassVar[str] = PROVIDER
    title: ClassVar[str] = "Runflow"
    key_env_var: ClassVar[str] = "RUNFLOW_API_KEY"
    base_url_env_var: ClassVar[str] = "RUNFLOW_BASE_URL"
    default_base_url: ClassVar[str] = "https://api.runflow.io"
    idempotent_creates: ClassVar[bool] = False
    can_find_by_task_id: ClassVar[bool] = True
    docs_url: ClassVar[str] = "https://docs.runflow.io"
    # Run outputs are presigned S3 URLs (`https://<bucket>.s3...amazonaws.com/outputs/...`);
    # the docs' sample images are on public.runflow.io. Runflow names no other host.
    download_hosts: ClassVar[tuple[str, ...]] = ("*.runflow.io", "*.amazonaws.com")
    # With a registered secret Runflow signs each callback: `Runflow-Signature` is the
    # lowercase hex HMAC-SHA256 of the raw body (the kit's default scheme). Runflow documents
    # no minimum poll interval (it recommends 2 s for image models): the core's floor holds.
    callback_signature_headers: ClassVar[tuple[str, ...]] = ("runflow-signature",)
    callback_task_id_fields: ClassVar[tuple[str, ...]] = ("run_id", "id")

    def model_families(self, capabilities: Mapping[str, Any]) -> tuple[str, ...]:
        """The families `model_ids` maps to Runflow model ids."""
        model_ids = capabilities.get("model_ids")
        return tuple(str(name) for name in model_ids) if isinstance(model_ids, Mapping) else ()

    def price_table(self) -> PriceTable:
        return PriceTable.from_package(_PACKAGE)

    def capabilities(self) -> Mapping[str, Any]:
        text = resources.files(_PACKAGE).joinpath("capabilities.yaml").read_text("utf-8")
        data = yaml.safe_load(text)
        if not isinstance(data, Mapping):
            raise ValueError("capabilities.yaml must hold a mapping")
        return dict(data)

    def prompt_key(self, prompt: str, capabilities: Mapping[str, Any]) -> Hashable:
        """offers() reads the prompt only to check gpt-image-1.5's documented length range."""
        return prompt_fits_15(prompt, capabilities)

    def offers(
        self, request: ImageRequest, *, prices: PriceTable, capabilities: Mapping[str, Any]
    ) -> list[Offer]:
        return [build_offer(request, prices=prices, capabilities=capabilities)]

    def client(self, settings: ProviderSettings, http: httpx.AsyncClient) -> RunflowClient:
        from .client import RunflowClient

        return RunflowClient(
            provider=self,
            http=http,
            api_key=settings.resolve_api_key(self),
            base_url=settings.resolve_base_url(self),
            timeout=settings.timeout,
            capabilities=merged_capabilities(self.capabilities(), settings.capabilities),
        )

    def emulator(self, options: EmulatorOptions) -> EmulatorApp:
        from .emulator import build_emulator

        return build_emulator(self, options)

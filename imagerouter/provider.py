"""The contract between the core and a provider plugin.

A plugin registers one `Provider` per backend (through the `register_providers` hook). The
provider is a pure description: its price table, its capability table, and `offers()`, which
maps a normalized request onto the provider's own parameters without any I/O. For the wire it
builds a `ProviderClient` bound to one config and one `httpx.AsyncClient`; the router owns
retries, failover and polling cadence, so a client makes exactly one HTTP attempt per call.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from .errors import ConfigError, MissingApiKeyError
from .urls import check_http_url

if TYPE_CHECKING:
    from .emulation import EmulatorApp, EmulatorOptions
    from .live_prices import FetchedPrices
    from .offers import Offer
    from .pricing import PriceTable
    from .request import ImageRequest, ModelName, Operation

__all__ = [
    "FreeCheck",
    "LoadedImage",
    "Provider",
    "ProviderClient",
    "ProviderSettings",
    "Submission",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
]


class ProviderSettings(BaseModel):
    """`providers.<name>` in the config. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    api_key: SecretStr | None = None
    # Set when api_key was `${VAR}` and VAR was unset at load: resolved again at use time,
    # so quoting works without keys.
    api_key_env: str | None = None
    base_url: str | None = None
    timeout: float = Field(default=60.0, gt=0, description="seconds per HTTP request")
    # None: the adaptive schedule (imagerouter.polling); a number: a fixed interval.
    poll_interval: float | None = Field(default=None, gt=0, description="seconds between polls")
    poll_deadline: float = Field(default=900.0, gt=0, description="seconds a job may run")
    prices: dict[str, Any] = Field(default_factory=dict)
    capabilities: dict[str, Any] = Field(default_factory=dict)

    def resolve_api_key(self, provider: Provider) -> SecretStr:
        """The key to use now, or MissingApiKeyError naming the variable to set."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key
        env_var = self.api_key_env or provider.key_env_var
        value = os.environ.get(env_var, "")
        if value:
            return SecretStr(value)
        raise MissingApiKeyError(provider.name, env_var)

    @field_validator("base_url")
    @classmethod
    def _http_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = check_http_url(value.strip())
        if problem is not None:
            raise ValueError(problem)
        return value.strip()

    def resolve_base_url(self, provider: Provider) -> str:
        """The API base URL: the config's, else `$<PROVIDER>_BASE_URL`, else the plugin's."""
        env_url = os.environ.get(provider.base_url_env_var)
        if not self.base_url and env_url:
            problem = check_http_url(env_url.strip())
            if problem is not None:
                raise ConfigError(
                    f"the environment variable {provider.base_url_env_var} {problem}"
                )
            return env_url.strip().rstrip("/")
        url = self.base_url or provider.default_base_url
        return url.rstrip("/")


class TaskState(StrEnum):
    """A provider job's state, normalized across every provider's spelling."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial_succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self not in (TaskState.QUEUED, TaskState.RUNNING)

    @property
    def produced_images(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.PARTIAL)


@dataclass(frozen=True)
class LoadedImage:
    """An edit input read from disk or bytes and checked (magic bytes, size cap, decodes)."""

    name: str
    data: bytes = field(repr=False)
    mime_type: str
    filename: str
    width: int
    height: int

    @property
    def size_bytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class TaskSpec:
    """One paid task to create. `task_id` is ours (sent as the provider's client reference,
    where it has one); `idempotency_key` stays the same for every retry of this task."""

    task_id: str
    idempotency_key: str
    prompt: str
    model: ModelName
    operation: Operation
    num_images: int
    params: Mapping[str, Any]
    input_urls: tuple[str, ...] = ()
    mask_url: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    callback_url: str | None = None
    # For synchronous providers whose answer carries the image bytes (OpenAI's b64_json): a
    # folder on the output's file system to decode them into (moved into place, not copied),
    # and a callback for streamed partial images (encoded bytes) that live displays show.
    scratch_dir: str | None = None
    on_partial: Callable[[bytes], None] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Submission:
    """The provider's answer to a create. `poll_ref` is what `ProviderClient.get` needs to
    poll it again later, even from another process (it is stored in the ledger)."""

    provider: str
    task_id: str
    poll_ref: str
    state: TaskState
    replayed: bool = False
    request_id: str | None = None
    billed_usd: Decimal | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # A synchronous provider (the create is the job) answers with the job already done: the
    # router records the acceptance, then takes this status instead of polling.
    status: TaskStatus | None = None


@dataclass(frozen=True)
class TaskStatus:
    """One poll's answer, normalized."""

    state: TaskState
    image_urls: tuple[str, ...] = ()
    billed_usd: Decimal | None = None
    error: str | None = None
    error_code: str | None = None
    urls_expire_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # Images the client already wrote to disk (temp files in `TaskSpec.scratch_dir`, decoded
    # from the answer), instead of URLs to download; the router validates and moves them.
    image_files: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state.terminal


@dataclass(frozen=True)
class FreeCheck:
    """The result of a free (unbilled) check: a balance or health endpoint."""

    ok: bool
    detail: str = ""
    balance_usd: Decimal | None = None


class Provider(ABC):
    """A backend, as a plugin describes it. Subclass it and register an instance."""

    name: ClassVar[str]
    title: ClassVar[str]
    key_env_var: ClassVar[str]
    base_url_env_var: ClassVar[str]
    default_base_url: ClassVar[str]
    # True when retrying a create with the same idempotency key can never make a second job.
    idempotent_creates: ClassVar[bool] = False
    # True when `ProviderClient.find` can look a task up by our task id (reconciliation).
    can_find_by_task_id: ClassVar[bool] = False
    # How long after a lost create `ProviderClient.reconcile` can still settle it without
    # risking a second task (an idempotency key the provider may forget); None: no limit.
    reconcile_window_s: ClassVar[float | None] = None
    # True: offers are ineligible ("off until KEY is set") while no key resolves, so a user
    # who never set one is not routed to it; emulation supplies a key, so it is on there.
    needs_key_to_route: ClassVar[bool] = False
    docs_url: ClassVar[str] = ""
    # Hosts the provider documents for its result image URLs (`*.domain` for subdomains).
    # The API's own host is always allowed; `downloads.allowed_hosts` adds more. Any other
    # host a result URL names is refused before it is fetched (see imagerouter/urls.py).
    download_hosts: ClassVar[tuple[str, ...]] = ()
    # The shortest wait between two polls of one task the core will ever schedule (seconds).
    poll_floor_s: ClassVar[float] = 0.5
    # Callbacks: the headers that may carry the signature (lowercase), and the body fields
    # that may name the task, first match wins (see `verify_callback`, `callback_task_id`).
    callback_signature_headers: ClassVar[tuple[str, ...]] = ("x-signature",)
    callback_task_id_fields: ClassVar[tuple[str, ...]] = ("run_id", "task_id", "id")
    # Keys of `providers.<name>` whose values are secrets (never echoed, always redacted).
    secret_settings: ClassVar[frozenset[str]] = frozenset({"api_key"})

    @abstractmethod
    def price_table(self) -> PriceTable:
        """The shipped price table (before the user's overrides)."""

    def capabilities(self) -> Mapping[str, Any]:
        """The shipped capability table (limits as data), before the user's overrides."""
        return {}

    @abstractmethod
    def offers(
        self,
        request: ImageRequest,
        *,
        prices: PriceTable,
        capabilities: Mapping[str, Any],
    ) -> list[Offer]:
        """Every way this provider could serve `request` (eligible or not, with reasons).
        Pure: no I/O. Usually one offer."""

    def prompt_key(self, prompt: str, capabilities: Mapping[str, Any]) -> Hashable:
        """What `offers()` reads of the prompt (None: nothing). The router reuses a quote for
        every request of the same shape and the same prompt keys, so a provider whose offers
        depend on the prompt (a length limit, say) must return that dependency here."""
        return None

    @abstractmethod
    def client(self, settings: ProviderSettings, http: httpx.AsyncClient) -> ProviderClient:
        """A wire client bound to these settings. Resolves the key (MissingApiKeyError)."""

    def model_families(self, capabilities: Mapping[str, Any]) -> tuple[str, ...]:
        """The model families this provider serves, from its capability table (the keys of
        its `models` mapping by default). Requests may name any family some provider
        declares; the core has no model list of its own."""
        models = capabilities.get("models")
        return tuple(str(name) for name in models) if isinstance(models, Mapping) else ()

    def images_per_task(self, offer: Offer) -> int:
        """How many images one paid task of `offer` makes at most (for counting failures
        when an error does not say): the offer's first batch."""
        return offer.batches[0] if offer.batches else 1

    def upload_limit_bytes(self, capabilities: Mapping[str, Any]) -> int | None:
        """The largest edit input this provider takes, from its capability table (None: the
        core's own download/upload caps apply alone)."""
        value = capabilities.get("max_upload_bytes")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return None

    def verify_callback(self, body: bytes, headers: Mapping[str, str], secret: str) -> bool:
        """Whether a callback carries a valid signature for `secret`. The default: a hex
        HMAC-SHA256 of the raw body in any of `callback_signature_headers`."""
        from .provider_kit.signatures import signature_matches

        return any(
            signature_matches(secret, body, headers.get(name))
            for name in self.callback_signature_headers
        )

    def callback_task_id(self, payload: Mapping[str, Any]) -> str | None:
        """The provider's task id a callback body names (its first `callback_task_id_fields`
        that holds text or a number), or None."""
        for name in self.callback_task_id_fields:
            value = payload.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return str(value)
        return None

    def emulator(self, options: EmulatorOptions) -> EmulatorApp:
        """An ASGI emulator of this provider's HTTP API, for tests and `--emulate`."""
        raise NotImplementedError(f"{self.name} ships no emulator")

    async def fetch_prices(
        self,
        settings: ProviderSettings,
        http: httpx.AsyncClient,
        *,
        etag: str | None = None,
    ) -> FetchedPrices | None:
        """The provider's current prices from its machine-readable price endpoint, in the
        shape of `price_table().prices` (`imagerouter prices refresh`, live_prices.py). One
        free GET, never a job; `etag` is the last answer's, for a 304. None: the provider
        publishes no machine-readable prices (the default)."""
        return None

    @property
    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        module = type(self).__module__.split(".")[0]
        try:
            return version(module.replace("_", "-"))
        except PackageNotFoundError:
            return "unknown"

    def __repr__(self) -> str:
        return f"<Provider {self.name}>"


class ProviderClient(ABC):
    """The wire client of one provider. Each method makes one HTTP attempt and raises an
    `imagerouter.errors.ProviderError` subclass on failure; it never retries a create."""

    provider: Provider

    @abstractmethod
    async def upload(self, image: LoadedImage) -> str:
        """Upload an edit input through the provider's upload flow; return its URL."""

    @abstractmethod
    async def submit(self, offer: Offer, task: TaskSpec) -> Submission:
        """Create one paid task. With `idempotent_creates`, a retry with the same
        `task.idempotency_key` returns the same task (`replayed=True`)."""

    @abstractmethod
    async def get(self, poll_ref: str) -> TaskStatus:
        """Poll a task once."""

    async def find(self, task: TaskSpec) -> Submission | None:
        """Look a task up by our task id (reconciliation after an unknown create).
        Returns None when no such task exists. Providers without this raise
        NotImplementedError."""
        raise NotImplementedError

    async def reconcile(self, task: TaskSpec) -> Submission | None:
        """Settle a create whose answer was lost, by the provider's own means and never by
        making a second task: the task if it exists, None if it provably does not.

        The core calls this later too (`resume`, the gateway's sweeper, the next request to
        this backend), with `task` rebuilt from the ledger. The default looks the task up by
        our task id (`find`); a provider with idempotent creates replays the create with the
        same key instead. NotImplementedError: this provider cannot settle it at all; a
        ProviderError: the look-up failed this time (it is tried again later)."""
        return await self.find(task)

    async def free_check(self) -> FreeCheck | None:
        """A free check (balance, health) if the provider has one."""
        return None

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a download of this provider's own result URLs, if any."""
        return {}

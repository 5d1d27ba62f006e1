"""What routing, accounting, reconciliation and resume need, as one frozen object.

The Router builds a `RouteDeps` once (`Router.deps`) and hands it to `route_request`,
`record_attempt`, `reconcile_unknown`, `resume_uncollected`, `reconcile_backend` and
`sweep`; none of them sees the Router (layout.md: a lower part never imports a higher one).
Behaviours are small Protocols, so a test can route a request with fakes and no Router.

The HTTP client is per event loop (transport.LoopClients), so the deps hold the accessors
(`http()`, `client_for(name)`) and never a client: one deps object stays valid across loops.
The stores (ledger, budget, health) and the mutable bookkeeping (`recovery`, `waiters`) are
the Router's own objects, shared, so what routing records is what the Router reports.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    import httpx

    from .budget import Budget
    from .clock import Clock, Sleep
    from .config import Config
    from .health import HealthTracker
    from .ledger import Ledger
    from .offers import Offer
    from .polling import PollSchedule
    from .provider import Provider, ProviderClient
    from .quoting import Catalog
    from .reconcile import RecoveryState
    from .request import ImageRequest
    from .urls import HostPolicy

__all__ = [
    "ClientFor",
    "DownloadPolicyFor",
    "Emit",
    "HasDeps",
    "HttpOfLoop",
    "QuoteRequest",
    "RouteDeps",
    "ScheduleFor",
    "as_deps",
]


class QuoteRequest(Protocol):
    """Every backend's offer for a request, ranked (quoting.quote with the live latencies)."""

    def __call__(self, request: ImageRequest, /) -> list[Offer]: ...


class ClientFor(Protocol):
    """A provider's client on the running loop's HTTP client."""

    def __call__(self, name: str, /) -> ProviderClient: ...


class HttpOfLoop(Protocol):
    """The running loop's HTTP client (one per loop: transport.LoopClients)."""

    def __call__(self) -> httpx.AsyncClient: ...


class ScheduleFor(Protocol):
    """How often an offer's task is polled (polling.py)."""

    def __call__(self, offer: Offer, /) -> PollSchedule: ...


class DownloadPolicyFor(Protocol):
    """The hosts a provider's result images may be downloaded from (urls.py)."""

    def __call__(self, name: str, /) -> HostPolicy: ...


class Emit(Protocol):
    """Call a plugin observability hook (`on_attempt`, `on_result`); never raises."""

    def __call__(self, hook: str, **kwargs: Any) -> None: ...


@dataclass(frozen=True, slots=True, repr=False)
class RouteDeps:
    """Everything one routed request, its bookkeeping and its recovery read or call.
    Its repr names the providers only: a field's own repr (a ledger URL) could hold a
    secret."""

    config: Config
    catalog: Catalog
    ledger: Ledger | None
    budget: Budget | None
    health: HealthTracker
    clock: Clock
    sleep: Sleep
    quote_request: QuoteRequest
    client_for: ClientFor
    http: HttpOfLoop
    schedule_for: ScheduleFor
    download_policy: DownloadPolicyFor
    emit: Emit
    recovery: RecoveryState
    # Polls waiting for a provider callback, by (provider, task id): the gateway sets them.
    waiters: dict[tuple[str, str], asyncio.Event]
    callback_base_url: str | None = None  # set only when a public URL reaches us

    def provider(self, name: str) -> Provider:
        return self.catalog.provider(name)

    def capabilities(self, name: str) -> Mapping[str, Any]:
        return self.catalog.entries[name].capabilities

    def callback_url(self, provider: str) -> str | None:
        if self.callback_base_url is None:
            return None
        return f"{self.callback_base_url}/callbacks/{provider}"

    def __repr__(self) -> str:
        ledger = "off" if self.ledger is None else "on"
        return f"<RouteDeps providers={sorted(self.catalog.entries)} ledger={ledger}>"


class HasDeps(Protocol):
    """Anything that carries a RouteDeps (the Router does)."""

    @property
    def deps(self) -> RouteDeps: ...


def as_deps(source: RouteDeps | HasDeps) -> RouteDeps:
    """`source` itself, or its `.deps`: public entry points (`resume_uncollected`, `sweep`)
    keep accepting a Router, as they did before they took deps."""
    return source if isinstance(source, RouteDeps) else source.deps

"""A test kit for plugin authors: a clock the test moves, one loopback server for a whole
session that serves whichever emulator the current test built, and settings for a client.

    from imagerouter.provider_kit.testing import FakeClock, SwitchApp, serve_switch

Everything here uses real sockets (an `EmulatorServer` on 127.0.0.1): a plugin's tests talk
HTTP to its emulator as the router would, and never sleep to move time.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from pydantic import SecretStr

from imagerouter.emulation import EmulatorServer, FaultPlan
from imagerouter.errors import (
    MalformedResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    SubmissionUnknownError,
)
from imagerouter.offers import Offer
from imagerouter.provider import (
    LoadedImage,
    Provider,
    ProviderClient,
    ProviderSettings,
    TaskSpec,
    TaskStatus,
)
from imagerouter.request import ImageRequest

__all__ = [
    "AFTER_CREATE_FAULTS",
    "POLL_FAULTS",
    "FakeClock",
    "SwitchApp",
    "check_download_faults",
    "check_poll_fault",
    "check_upload_fault",
    "make_settings",
    "offer_maker",
    "serve_switch",
    "shared_ssl_context",
    "task_maker",
]

# Create faults that strike after the job exists (imagerouter.emulation.answer_after_create)
# and the error each raises: the job may be billed, so each must be settled by the provider's
# own means (a replay with the same key, a look-up by our task id), never by a second create.
AFTER_CREATE_FAULTS: tuple[tuple[str, type[ProviderError]], ...] = (
    ("create:reset_after_send", SubmissionUnknownError),
    ("create:created_500", ProviderUnavailableError),
    ("create:malformed", MalformedResponseError),
)

# The poll-fault contract every plugin's client meets against its own emulator: the error
# each injected poll fault raises. Each is an accepted failure (the job exists), and the next
# poll is fine again. Parametrize a test over it and call `check_poll_fault`.
POLL_FAULTS: tuple[tuple[str, type[ProviderError]], ...] = (
    ("poll:500", ProviderUnavailableError),
    ("poll:503", ProviderUnavailableError),
    ("poll:429", RateLimitedError),
    ("poll:malformed", MalformedResponseError),
    # The poll was sent and its answer lost: "sent, no answer", not "never sent".
    ("poll:reset", ProviderUnavailableError),
)


class FakeClock:
    """A monotonic clock the test moves by hand (an emulator reads it from its thread)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SwitchApp:
    """An ASGI app that forwards to whichever emulator the current test installed, so one
    uvicorn server serves every test (starting one per test costs a few hundred ms)."""

    def __init__(self) -> None:
        self.target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.target(scope, receive, send)


@contextmanager
def serve_switch() -> Iterator[tuple[SwitchApp, EmulatorServer]]:
    """A `SwitchApp` served on a loopback port for as long as the block runs; use it in a
    session-scoped fixture and set `switch.target = emulator.app` in each test."""
    switch = SwitchApp()
    with EmulatorServer(switch) as server:
        yield switch, server


_SSL: ssl.SSLContext | None = None


def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every test client (building httpx's default costs ~0.1 s each)."""
    global _SSL
    if _SSL is None:
        _SSL = ssl.create_default_context()
    return _SSL


def make_settings(key: str, base_url: str, **fields: Any) -> ProviderSettings:
    """`providers.<name>` settings pointing a client at an emulator with this key."""
    return ProviderSettings(api_key=SecretStr(key), base_url=base_url, **fields)


def offer_maker(provider: Provider, *, prompt: str = "a red fox") -> Callable[..., Offer]:
    """`build(**request_fields) -> Offer`: the provider's one eligible offer for an
    `ImageRequest.build(...)` at its shipped prices and capabilities (asserts eligible)."""

    def build(**fields: Any) -> Offer:
        request = ImageRequest.build(prompt=fields.pop("prompt", prompt), **fields)
        (offer,) = provider.offers(
            request, prices=provider.price_table(), capabilities=provider.capabilities()
        )
        assert offer.eligible, offer.reason
        return offer

    return build


def task_maker(**defaults: Any) -> Callable[..., TaskSpec]:
    """`build(offer, **fields) -> TaskSpec`: the task the router would hand a client for
    `offer`, with numbered task ids and idempotency keys; `defaults` and `fields` override."""
    counter = iter(range(1, 1_000_000))

    def build(offer: Offer, **fields: Any) -> TaskSpec:
        number = next(counter)
        base: dict[str, Any] = {
            "task_id": f"task-{number:04d}",
            "idempotency_key": f"idem-{number:04d}",
            "prompt": "a red fox",
            "model": offer.model,
            "operation": offer.operation,
            "num_images": offer.batches[0],
            "params": dict(offer.params),
            **defaults,
        }
        base.update(fields)
        return TaskSpec(**base)

    return build


async def check_poll_fault(
    client: ProviderClient,
    faults: FaultPlan,
    poll_ref: str,
    rule: str,
    error: type[ProviderError],
) -> TaskStatus:
    """Inject `rule` (a POLL_FAULTS entry) once, check the poll raises `error` with
    `accepted == "yes"`, and return the next poll's answer (which must succeed)."""
    faults.add(rule.replace("poll:", "poll:seq="))
    try:
        await client.get(poll_ref)
    except error as exc:
        if exc.accepted != "yes":
            raise AssertionError(f"{rule}: accepted={exc.accepted!r}, not 'yes'") from exc
    else:
        raise AssertionError(f"{rule}: the poll did not fail")
    return await client.get(poll_ref)


async def check_upload_fault(
    client: ProviderClient,
    faults: FaultPlan,
    image: LoadedImage,
    rule: str,
    error: type[ProviderError],
) -> None:
    """Inject the upload fault `rule`; the upload must raise `error` with `accepted == "no"`
    (an upload never makes a paid job, whatever happened to it)."""
    faults.add(rule)
    try:
        await client.upload(image)
    except error as exc:
        if exc.accepted != "no":
            raise AssertionError(f"{rule}: accepted={exc.accepted!r}, not 'no'") from exc
    else:
        raise AssertionError(f"{rule}: the upload did not fail")


async def check_download_faults(http: httpx.AsyncClient, faults: FaultPlan, url: str) -> None:
    """A result URL answers a `download_404`, then a `truncated` body (the first half of the
    image), then the whole image again."""
    whole = (await http.get(url)).content
    faults.add("download:seq=download_404,truncated")
    missing = await http.get(url)
    if missing.status_code != 404:
        raise AssertionError(f"download_404 answered {missing.status_code}")
    truncated = await http.get(url)
    if truncated.status_code != 200 or truncated.content != whole[: len(whole) // 2]:
        raise AssertionError("truncated did not serve the first half of the image")
    if (await http.get(url)).content != whole:
        raise AssertionError("the download after the faults was not the whole image")

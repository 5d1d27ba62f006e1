"""Issue 12, request idempotency: a repeat with the same `idempotency_key` (Python API) or
`Idempotency-Key` header (gateway, driven by the official `openai` client) gets the first
call's result and never makes a second paid create, counted at the emulators; the same key
with another request is a conflict, with no paid create."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from imagerouter import IdempotencyConflictError, RequestValidationError
from imagerouter.emulated import Emulators

from .conftest import MakeRouter
from .test_gateway import GATEWAY_KEY, ServeGateway, items, serve_gateway
from .test_gateway_jobs import slow_emulators

__all__ = ["serve_gateway"]  # the fixture, imported for this module


def paid(emulators: Emulators) -> int:
    return sum(emulators.created().values())


def test_two_identical_keyed_calls_pay_once(make_router: MakeRouter, emulators: Emulators) -> None:
    router = make_router()
    first = router.generate("a fox", quality="low", idempotency_key="order-1")
    again = router.generate("a fox", quality="low", idempotency_key="order-1")
    assert paid(emulators) == 1
    assert again.request_id == first.request_id
    assert [image.path for image in again.images] == [image.path for image in first.images]
    # Without a key, the same request is a new one (and is paid again).
    router.generate("a fox", quality="low")
    assert paid(emulators) == 2


def test_the_same_key_for_another_request_is_a_conflict(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    router = make_router()
    first = router.generate("a fox", idempotency_key="order-2")
    with pytest.raises(IdempotencyConflictError) as caught:
        router.generate("a wolf", idempotency_key="order-2")
    assert caught.value.request_id == first.request_id
    assert paid(emulators) == 1


def test_a_bad_key_is_refused_before_anything_is_paid(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    router = make_router()
    with pytest.raises(RequestValidationError, match="idempotency_key"):
        router.generate("a fox", idempotency_key="x" * 300)
    assert paid(emulators) == 0


def test_keyed_calls_from_two_threads_at_once_pay_once(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    slow_emulators(emulators, 0.3)
    router = make_router()
    results: list[str] = []

    def call() -> None:
        results.append(router.generate("a fox", idempotency_key="order-3").request_id)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 and results[0] == results[1]
    assert paid(emulators) == 1


def test_the_gateway_pays_once_for_two_keyed_calls_and_refuses_a_conflict(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway()
    client = served.client()
    headers = {"Idempotency-Key": "gw-1"}
    first = client.images.generate(prompt="a fox", extra_headers=headers)
    again = client.images.generate(prompt="a fox", extra_headers=headers)
    assert items(again)[0].b64_json == items(first)[0].b64_json
    assert paid(emulators) == 1
    with pytest.raises(openai.ConflictError) as caught:
        client.images.generate(prompt="a wolf", extra_headers=headers)
    assert caught.value.code == "idempotency_conflict"
    assert paid(emulators) == 1


async def test_the_async_client_retrying_after_a_disconnect_gets_the_first_job(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    slow_emulators(emulators, 0.5)
    served = serve_gateway()
    headers = {"authorization": f"Bearer {GATEWAY_KEY}", "idempotency-key": "gw-2"}
    async with httpx.AsyncClient(base_url=served.url,
                                 timeout=httpx.Timeout(5.0, read=0.1)) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post("/v1/images/generations", json={"prompt": "a slow fox"},
                                 headers=headers)
    deadline = time.monotonic() + 10
    while not served.gateway.jobs.recent(1):
        assert time.monotonic() < deadline, "the gateway never started the job"
        await asyncio.sleep(0.02)
    client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key=GATEWAY_KEY)
    async with client:
        response = await client.images.generate(
            prompt="a slow fox", extra_headers={"Idempotency-Key": "gw-2"}
        )
    assert items(response)[0].b64_json
    assert paid(emulators) == 1  # the retry waited for the first job instead of paying again

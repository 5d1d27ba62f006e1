"""Issue 12: with every backend failing fast, no request waits out an ejection before any
backend accepted it (it answers at once, 503 with Retry-After on the gateway), and a retry
within one request goes to the backend doing better, not back to the cheaper failing one.
Sleeps are injected and recorded; nothing here measures time."""

from __future__ import annotations

import asyncio

import pytest

from imagerouter.emulated import Emulators
from imagerouter.emulation import FaultPlan
from imagerouter.errors import BackendsUnavailableError, ProviderError
from imagerouter.health_store import FailureKind
from imagerouter.routing import FAST_FAIL_WAIT_S

from .conftest import MakeRouter
from .test_gateway import ServeGateway, serve_gateway

__all__ = ["serve_gateway"]  # the fixture, imported for this module


class RecordedSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


def fail_every_create(emulators: Emulators) -> None:
    for app in emulators.apps.values():
        app.options.faults = FaultPlan.parse("create:503")


def test_no_long_wait_before_any_backend_accepted(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fail_every_create(emulators)
    sleep = RecordedSleep()
    router = make_router(sleep=sleep)
    errors: list[Exception] = []
    for _ in range(4):  # the first two eject both backends; then every backend is out
        with pytest.raises((ProviderError, BackendsUnavailableError)) as caught:
            router.generate("a fox")
        errors.append(caught.value)
    assert all(wait <= FAST_FAIL_WAIT_S for wait in sleep.waits), sleep.waits
    last = errors[-1]
    assert isinstance(last, BackendsUnavailableError)
    assert last.retry_after_s > FAST_FAIL_WAIT_S  # an ejection lasts 30 s by default
    assert "retry in" in str(last)
    assert emulators.created() == {"runapi": 0, "runflow": 0}


def test_the_gateway_answers_503_with_retry_after(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    fail_every_create(emulators)
    served = serve_gateway()
    sleep = RecordedSleep()
    served.router.sleep = sleep
    with served.http(timeout=30) as http:
        answers = [http.post("/v1/images/generations", json={"prompt": "a fox"}) for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [502, 502]
    last = answers[2]
    assert last.status_code == 503, last.text
    assert last.json()["error"]["code"] == "no_backend_available"
    assert int(last.headers["retry-after"]) > FAST_FAIL_WAIT_S
    assert all(wait <= FAST_FAIL_WAIT_S for wait in sleep.waits), sleep.waits


def test_a_retry_goes_to_the_backend_doing_better(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    emulators.apps["runapi"].options.faults = FaultPlan.parse("create:503")
    emulators.apps["runflow"].options.faults = FaultPlan.parse("create:seq=503,ok")
    router = make_router(sleep=RecordedSleep())
    # runapi (the cheapest at 1k) already failed once before this request.
    router.health.begin(("runapi", "gpt-image-2", "generate"))
    router.health.record_failure(("runapi", "gpt-image-2", "generate"), FailureKind.TRANSIENT)
    result = router.generate("a fox")
    # runapi fails (streak 2), runflow fails (streak 1); the third attempt is runflow's.
    assert [a.provider for a in result.attempts] == ["runapi", "runflow", "runflow"]
    assert result.provider == "runflow"

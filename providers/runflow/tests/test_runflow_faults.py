"""Injected faults against the emulator over loopback, the error each maps to, and whether a
paid run was created; uploads and downloads; the key never leaks."""

from __future__ import annotations

import functools
import io
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from imagerouter import errors
from imagerouter.offers import Offer
from imagerouter.provider import LoadedImage, TaskSpec, TaskState
from imagerouter.provider_kit import testing as contract

if TYPE_CHECKING:
    from conftest import Rig

MakeOffer = Callable[..., Offer]
MakeTask = Callable[..., TaskSpec]
MakeRig = Callable[..., Awaitable["Rig"]]


def png(size: int = 16) -> LoadedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), "blue").save(buffer, "PNG")
    return LoadedImage(
        name="blue.png",
        data=buffer.getvalue(),
        mime_type="image/png",
        filename="blue.png",
        width=size,
        height=size,
    )


# -- create faults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "error", "code", "accepted"),
    [
        ("create:429", errors.RateLimitedError, "RATE_LIMITED", "no"),
        ("create:402", errors.InsufficientCreditsError, "INSUFFICIENT_CREDIT", "no"),
        ("create:503", errors.ProviderUnavailableError, "MODEL_UNAVAILABLE", "no"),
        ("create:500", errors.ProviderUnavailableError, "INTERNAL_ERROR", "unknown"),
        ("create:502", errors.ProviderUnavailableError, "BAD_GATEWAY", "unknown"),
        ("create:422", errors.InvalidRequestError, "VALIDATION_ERROR", "no"),
    ],
)
async def test_status_faults_on_create_create_no_run(
    rig: Rig,
    make_offer: MakeOffer,
    make_task: MakeTask,
    rule: str,
    error: type[errors.ProviderError],
    code: str,
    accepted: str,
) -> None:
    rig.emulator.options.faults.add(rule)
    offer = make_offer()
    with pytest.raises(error) as caught:
        await rig.client.submit(offer, make_task(offer))
    assert caught.value.code == code
    assert caught.value.accepted == accepted
    assert rig.emulator.counters.created == 0
    assert rig.emulator.counters.faults == {rule: 1}


async def test_429_with_and_without_retry_after(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    rig.emulator.options.faults.add("create:seq=429,ok:retry_after=2")
    rig.emulator.options.faults.add("create:seq=ok,429")
    offer = make_offer()
    with pytest.raises(errors.RateLimitedError) as first:
        await rig.client.submit(offer, make_task(offer))
    with pytest.raises(errors.RateLimitedError) as second:
        await rig.client.submit(offer, make_task(offer))
    assert first.value.retry_after == 2
    assert second.value.retry_after is None
    submission = await rig.client.submit(offer, make_task(offer))
    assert submission.state is TaskState.QUEUED
    assert rig.emulator.counters.created == 1


async def test_reset_before_a_response_is_unknown_but_created_nothing(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    rig.emulator.options.faults.add("create:reset")
    offer = make_offer()
    task = make_task(offer)
    with pytest.raises(errors.SubmissionUnknownError) as caught:
        await rig.client.submit(offer, task)
    assert caught.value.accepted == "unknown"
    assert caught.value.client_ref == task.task_id
    assert rig.emulator.counters.created == 0
    # Reconciliation answers the question the error left open.
    rig.emulator.options.faults.clear()
    assert await rig.client.find(task) is None


@pytest.mark.parametrize(("rule", "error"), contract.AFTER_CREATE_FAULTS)
async def test_lost_answers_after_a_created_run_are_found_by_client_ref(
    rig: Rig,
    make_offer: MakeOffer,
    make_task: MakeTask,
    rule: str,
    error: type[errors.ProviderError],
) -> None:
    rig.emulator.options.faults.add(rule)
    offer = make_offer(quality="low", size="1024x640")
    task = make_task(offer)
    with pytest.raises(error) as caught:
        await rig.client.submit(offer, task)
    assert caught.value.accepted == "unknown"
    assert rig.emulator.counters.created == 1
    found = await rig.client.find(task)
    assert found is not None
    rig.finish_runs()
    status = await rig.client.get(found.poll_ref)
    assert status.state is TaskState.SUCCEEDED
    assert rig.emulator.counters.billed_usd == Decimal("0.009")


async def test_hang_times_out_as_unknown_and_the_run_exists(
    make_rig: MakeRig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    rig = await make_rig(hang_seconds=0.6, settings={"timeout": 0.1})
    rig.emulator.options.faults.add("create:hang")
    offer = make_offer()
    task = make_task(offer)
    with pytest.raises(errors.SubmissionUnknownError) as caught:
        await rig.client.submit(offer, task)
    assert caught.value.accepted == "unknown"
    assert rig.emulator.counters.created == 1
    found = await rig.client.find(task)
    assert found is not None and found.task_id == found.poll_ref  # the run's own id


async def test_task_failed_is_not_billed(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    rig.emulator.options.faults.add("create:task_failed")
    offer = make_offer()
    submission = await rig.client.submit(offer, make_task(offer))
    rig.finish_runs()
    status = await rig.client.get(submission.poll_ref)
    assert status.state is TaskState.FAILED
    assert status.error_code == "PROVIDER_ERROR"
    assert status.error
    assert status.image_urls == ()
    assert rig.emulator.counters.billed_usd == 0
    assert rig.emulator.counters.failed == 1


async def test_task_stuck_keeps_running(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    rig.emulator.options.faults.add("create:task_stuck")
    offer = make_offer()
    submission = await rig.client.submit(offer, make_task(offer))
    rig.clock.advance(3600)
    status = await rig.client.get(submission.poll_ref)
    assert status.state is TaskState.RUNNING
    assert rig.emulator.counters.billed_usd == 0


async def test_connection_refused_is_not_accepted(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        client = rig.client_with(base_url=f"http://127.0.0.1:{port}")
        offer = make_offer()
        with pytest.raises(errors.ConnectionFailedError) as caught:
            await client.submit(offer, make_task(offer))
    assert caught.value.accepted == "no"


# -- poll and find faults -------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "error"), contract.POLL_FAULTS)
async def test_poll_faults_are_accepted_yes(
    rig: Rig,
    make_offer: MakeOffer,
    make_task: MakeTask,
    rule: str,
    error: type[errors.ProviderError],
) -> None:
    offer = make_offer()
    submission = await rig.client.submit(offer, make_task(offer))
    faults = rig.emulator.options.faults
    after = await contract.check_poll_fault(rig.client, faults, submission.poll_ref, rule, error)
    assert after.state is TaskState.QUEUED


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ("find:500", errors.ProviderUnavailableError),
        ("find:malformed", errors.MalformedResponseError),
    ],
)
async def test_find_faults(
    rig: Rig,
    make_offer: MakeOffer,
    make_task: MakeTask,
    rule: str,
    error: type[errors.ProviderError],
) -> None:
    rig.emulator.options.faults.add(rule)
    offer = make_offer()
    with pytest.raises(error):
        await rig.client.find(make_task(offer))


# -- uploads and downloads ------------------------------------------------------------------


async def test_upload_three_steps_and_the_put_has_no_authorization(rig: Rig) -> None:
    image = png()
    url = await rig.client.upload(image)
    steps = [(request.method, request.url.path) for request in rig.sent]
    assert steps[0] == ("POST", "/v1/asset-uploads")
    assert steps[1][0] == "PUT" and steps[1][1].startswith("/uploads/")
    assert steps[2][0] == "POST" and steps[2][1].endswith("/confirmations")
    put = rig.sent[1]
    assert "authorization" not in put.headers
    assert put.headers["content-type"] == "image/png"
    assert "authorization" in rig.sent[0].headers and "authorization" in rig.sent[2].headers
    assert rig.emulator.counters.uploads == 1
    response = await rig.http.get(url)
    assert response.content == image.data


async def test_emulated_storage_refuses_a_put_with_authorization(rig: Rig) -> None:
    slot = (
        await rig.http.post(
            f"{rig.server.url}/v1/asset-uploads",
            json={"filename": "a.png", "mime_type": "image/png", "size_bytes": 3},
            headers={"Authorization": f"Bearer {rig.key}"},
        )
    ).json()
    refused = await rig.http.put(
        slot["upload_url"],
        content=b"abc",
        headers={"Authorization": f"Bearer {rig.key}", "Content-Type": "image/png"},
    )
    assert refused.status_code == 400
    accepted = await rig.http.put(
        slot["upload_url"], content=b"abc", headers={"Content-Type": "image/png"}
    )
    assert accepted.status_code == 200


async def test_emulator_upload_cap_is_413(make_rig: MakeRig) -> None:
    rig = await make_rig(max_upload_bytes=100)
    with pytest.raises(errors.InvalidRequestError) as caught:
        await rig.client.upload(png(64))
    assert caught.value.status_code == 413


# Upload fault -> (error, assets confirmed). Runflow's upload is three steps: a fault on
# the second or third call hits after the first went through.
UPLOAD_FAULTS: dict[str, tuple[type[errors.ProviderError], int]] = {
    "upload:503": (errors.ProviderUnavailableError, 0),
    "upload:401": (errors.ProviderError, 0),
    "upload:seq=ok,reset": (errors.ProviderUnavailableError, 0),
    # The confirmation went through; only its answer was lost (a stored, unused asset).
    "upload:seq=ok,ok,created_500": (errors.ProviderUnavailableError, 1),
}


@pytest.mark.parametrize(
    ("rule", "error", "confirmed"), [(rule, *want) for rule, want in UPLOAD_FAULTS.items()]
)
async def test_upload_faults(
    rig: Rig, rule: str, error: type[errors.ProviderError], confirmed: int
) -> None:
    await contract.check_upload_fault(rig.client, rig.emulator.options.faults, png(), rule, error)
    assert rig.emulator.counters.uploads == confirmed


async def test_download_faults(rig: Rig, make_offer: MakeOffer, make_task: MakeTask) -> None:
    offer = make_offer(size="1024x640")
    submission = await rig.client.submit(offer, make_task(offer))
    rig.finish_runs()
    (url,) = (await rig.client.get(submission.poll_ref)).image_urls
    await contract.check_download_faults(rig.http, rig.emulator.options.faults, url)
    assert rig.emulator.counters.downloads == 3


# -- secrets --------------------------------------------------------------------------------


async def test_the_key_appears_in_no_error(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer()
    caught: list[errors.ProviderError] = []
    wrong = rig.client_with(api_key=rig.key + "x")
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: wrong.submit(offer, make_task(offer)),
        lambda: wrong.upload(png()),
    ]
    for rule in ("create:500", "create:429", "create:reset", "create:malformed", "find:503"):
        calls.append(functools.partial(_faulted, rig, rule, offer, make_task(offer)))
    for call in calls:
        with pytest.raises(errors.ProviderError) as info:
            await call()
        caught.append(info.value)
    assert len(caught) == 7
    for exc in caught:
        for text in (str(exc), repr(exc), exc.args[0], getattr(exc, "body", "") or ""):
            assert rig.key not in text
    assert rig.key not in repr(rig.client)


async def _faulted(rig: Rig, rule: str, offer: Offer, task: TaskSpec) -> None:
    rig.emulator.options.faults.clear()
    rig.emulator.options.faults.add(rule)
    if rule.startswith("find"):
        await rig.client.find(task)
    else:
        await rig.client.submit(offer, task)

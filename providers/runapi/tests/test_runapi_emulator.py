"""RunAPIClient against the RunAPI emulator over real loopback sockets: every endpoint, the
task lifecycle, idempotent replay, validation, and each fault as the client sees it."""

from __future__ import annotations

import io
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from imagerouter_runapi import RunAPIClient
from PIL import Image

from imagerouter import errors
from imagerouter.geometry import Ratio, pixels_for
from imagerouter.offers import Offer
from imagerouter.provider import LoadedImage, TaskSpec, TaskState
from imagerouter.provider_kit import testing as contract

Spec = Callable[..., TaskSpec]
OfferFor = Callable[[TaskSpec], Offer]


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def submit(client: RunAPIClient, offer_for: OfferFor, task: TaskSpec) -> Any:
    return await client.submit(offer_for(task), task)


async def finished(client: RunAPIClient, emulator: Any, poll_ref: str) -> Any:
    emulator.finish_jobs()
    return await client.get(poll_ref)


# -- lifecycle -------------------------------------------------------------------------------


async def test_text_to_image_goes_pending_processing_completed(
    client: RunAPIClient, emulator: Any, spec: Spec, offer_for: OfferFor, http: httpx.AsyncClient
) -> None:
    params = {"model": "gpt-image-2", "aspect_ratio": "16:9", "output_resolution": "1k"}
    submission = await submit(client, offer_for, spec(params=params))
    assert submission.state is TaskState.QUEUED
    assert submission.billed_usd is None
    assert submission.request_id and submission.request_id.startswith("req_")

    assert (await client.get(submission.poll_ref)).state is TaskState.QUEUED
    emulator.clock.advance(0.005)
    running = await client.get(submission.poll_ref)
    assert running.state is TaskState.RUNNING and running.image_urls == ()

    done = await finished(client, emulator, submission.poll_ref)
    assert done.state is TaskState.SUCCEEDED
    assert done.billed_usd == Decimal("0.06")
    [url] = done.image_urls
    assert url.startswith(emulator.url + "/files/")

    response = await http.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    assert image.size == pixels_for(Ratio(16, 9), "1k")

    counters = emulator.app.counters.snapshot()
    assert counters["created"] == 1
    assert counters["billed_usd"] == Decimal("0.06")
    assert counters["polls"] == 3


@pytest.mark.parametrize(
    ("model", "params", "size", "cost"),
    [
        ("gpt-image-2", {"aspect_ratio": "auto", "output_resolution": "1k"}, (1024, 1024), "0.06"),
        (
            "gpt-image-2",
            {"aspect_ratio": "3:2", "output_resolution": "2k"},
            pixels_for(Ratio(3, 2), "2k"),
            "0.10",
        ),
        ("gpt-image-1.5", {"aspect_ratio": "2:3", "quality": "medium"}, (1024, 1536), "0.04"),
        ("gpt-image-1.5", {"aspect_ratio": "3:2", "quality": "high"}, (1536, 1024), "0.04"),
    ],
)
async def test_image_sizes_and_costs_follow_the_params(
    client: RunAPIClient,
    emulator: Any,
    spec: Spec,
    offer_for: OfferFor,
    http: httpx.AsyncClient,
    model: str,
    params: dict[str, str],
    size: tuple[int, int],
    cost: str,
) -> None:
    task = spec(model=model, params={"model": model, **params})
    submission = await submit(client, offer_for, task)
    done = await finished(client, emulator, submission.poll_ref)
    assert done.billed_usd == Decimal(cost)
    image = Image.open(io.BytesIO((await http.get(done.image_urls[0])).content))
    assert image.size == size


async def test_edit_after_upload_for_both_models(
    client: RunAPIClient, emulator: Any, spec: Spec, offer_for: OfferFor, http: httpx.AsyncClient
) -> None:
    data = png_bytes()
    image = LoadedImage(
        name="in", data=data, mime_type="image/png", filename="in.png", width=64, height=48
    )
    url = await client.upload(image)
    assert url.startswith(emulator.url + "/files/")
    assert (await http.get(url)).content == data
    for index, model in enumerate(("gpt-image-2", "gpt-image-1.5")):
        task = spec(
            model=model,
            operation="edit",
            input_urls=(url, url),
            key=f"edit-{index}",
            task_id=f"edit-{index}",
        )
        submission = await submit(client, offer_for, task)
        assert submission.poll_ref.split("/")[1] == "edit_image"
        done = await finished(client, emulator, submission.poll_ref)
        assert done.state is TaskState.SUCCEEDED
    assert emulator.app.counters.uploads == 1
    assert emulator.app.counters.created == 2


async def test_actionless_poll_and_unknown_tasks(
    client: RunAPIClient, emulator: Any, spec: Spec, offer_for: OfferFor
) -> None:
    submission = await submit(client, offer_for, spec())
    assert (await client.get(f"gpt_image_2/{submission.task_id}")).state is TaskState.QUEUED
    with pytest.raises(errors.InvalidRequestError) as info:
        await client.get(f"gpt_image/text_to_image/{submission.task_id}")  # other service
    assert info.value.status_code == 404 and info.value.code == "not_found"
    assert info.value.accepted == "yes"
    with pytest.raises(errors.InvalidRequestError):
        await client.get("gpt_image_2/text_to_image/00000000-0000-4000-8000-000000000000")


async def test_callback_url_and_client_request_id_are_kept(
    client: RunAPIClient, emulator: Any, spec: Spec, offer_for: OfferFor
) -> None:
    task = spec(callback_url="https://hooks.example/runapi", task_id="ours-42")
    await submit(client, offer_for, task)
    [job] = emulator.app.app.state.emulator.book.all()
    assert job.extra["callback_url"] == "https://hooks.example/runapi"
    assert job.extra["client_request_id"] == "ours-42"
    assert job.extra["idempotency_key"] == task.idempotency_key


# -- idempotency -----------------------------------------------------------------------------


async def test_same_key_and_body_replays_the_task(
    client: RunAPIClient, emulator: Any, spec: Spec, offer_for: OfferFor
) -> None:
    task = spec()
    first = await submit(client, offer_for, task)
    second = await submit(client, offer_for, task)
    assert first.replayed is False
    assert second.replayed is True
    assert second.task_id == first.task_id
    assert emulator.app.counters.created == 1
    assert emulator.app.counters.replayed == 1
    await finished(client, emulator, first.poll_ref)
    assert emulator.app.counters.snapshot()["billed_usd"] == Decimal("0.06")


async def test_same_key_with_other_input_is_a_409(
    client: RunAPIClient, emulator: Any, spec: Spec, offer_for: OfferFor
) -> None:
    await submit(client, offer_for, spec(prompt="one"))
    with pytest.raises(errors.InvalidRequestError) as info:
        await submit(client, offer_for, spec(prompt="two"))
    assert info.value.status_code == 409
    assert info.value.code == "idempotency_key_reused"
    assert info.value.accepted == "no"
    assert emulator.app.counters.created == 1


async def test_different_keys_make_different_tasks(
    client: RunAPIClient, emulator: Any, spec: Spec, offer_for: OfferFor
) -> None:
    a = await submit(client, offer_for, spec(key="k-a"))
    b = await submit(client, offer_for, spec(key="k-b"))
    assert a.task_id != b.task_id
    assert emulator.app.counters.created == 2


# -- validation and auth ---------------------------------------------------------------------


async def test_the_emulator_refuses_what_runapi_would(
    client: RunAPIClient, spec: Spec, offer_for: OfferFor, emulator: Any
) -> None:
    bad = spec(params={"model": "gpt-image-2", "aspect_ratio": "1:1", "output_resolution": "4k"})
    with pytest.raises(errors.InvalidRequestError) as info:
        await submit(client, offer_for, bad)
    assert info.value.status_code == 422
    assert info.value.fields == {"output_resolution": ["1:1 cannot be 4k"]}
    assert emulator.app.counters.created == 0


@pytest.mark.parametrize(
    ("path", "body", "fields"),
    [
        ("gpt_image_2/text_to_image", {"model": "gpt-image-2"}, {"prompt": ["is required"]}),
        ("gpt_image_2/text_to_image", {"prompt": "x"}, {"model": ["is required"]}),
        (
            "gpt_image_2/text_to_image",
            {"model": "gpt-image-1.5", "prompt": "x"},
            {"model": ["must be gpt-image-2"]},
        ),
        (
            "gpt_image_2/text_to_image",
            {"model": "gpt-image-2", "prompt": "x", "aspect_ratio": "5:3"},
            {"aspect_ratio": None},
        ),
        (
            "gpt_image_2/text_to_image",
            {"model": "gpt-image-2", "prompt": "x", "output_resolution": "8K"},
            {"output_resolution": None},
        ),
        (
            "gpt_image_2/text_to_image",
            {"model": "gpt-image-2", "prompt": "x", "output_resolution": "2k"},
            {"output_resolution": ["auto/unset aspect_ratio only supports 1k"]},
        ),
        (
            "gpt_image_2/text_to_image",
            {"model": "gpt-image-2", "prompt": "x", "quality": "high"},
            {"quality": ["is not a known field"]},
        ),
        (
            "gpt_image_2/edit_image",
            {"model": "gpt-image-2", "prompt": "x"},
            {"source_image_urls": ["is required"]},
        ),
        (
            "gpt_image_2/edit_image",
            {"model": "gpt-image-2", "prompt": "x", "source_image_urls": ["ftp://x"]},
            {"source_image_urls": ["must be a list of http(s) URLs"]},
        ),
        (
            "gpt_image/text_to_image",
            {"model": "gpt-image-1.5", "prompt": "x"},
            {"aspect_ratio": ["is required"], "quality": ["is required"]},
        ),
        (
            "gpt_image/text_to_image",
            {"model": "gpt-image-1.5", "prompt": "x", "aspect_ratio": "16:9", "quality": "low"},
            {"aspect_ratio": None, "quality": None},
        ),
    ],
)
async def test_validation_bodies(
    emulator: Any,
    http: httpx.AsyncClient,
    api_key: str,
    path: str,
    body: dict[str, Any],
    fields: dict[str, list[str] | None],
) -> None:
    response = await http.post(
        f"{emulator.url}/api/v1/{path}", json=body, headers={"Authorization": f"Bearer {api_key}"}
    )
    assert response.status_code == 422
    data = response.json()
    assert data["error"] == "Validation failed"
    assert set(data["errors"]) == set(fields)
    for name, messages in fields.items():
        if messages is not None:
            assert data["errors"][name] == messages
    assert response.headers["x-request-id"]
    assert emulator.app.counters.created == 0


async def test_bad_json_and_unknown_endpoints(
    emulator: Any, http: httpx.AsyncClient, api_key: str
) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    response = await http.post(
        f"{emulator.url}/api/v1/gpt_image_2/text_to_image", content=b"{nope", headers=auth
    )
    assert response.status_code == 400 and response.json() == {"error": "Bad input"}
    response = await http.post(f"{emulator.url}/api/v1/dalle/text_to_image", json={}, headers=auth)
    assert response.status_code == 404


async def test_a_wrong_key_is_refused_everywhere(
    make_client: Callable[..., RunAPIClient],
    spec: Spec,
    offer_for: OfferFor,
    emulator: Any,
    http: httpx.AsyncClient,
) -> None:
    wrong = "sk-wrong-0d9a8c7b6e5f"
    client = make_client(key=wrong)
    raised: list[errors.ProviderError] = []
    with pytest.raises(errors.AuthenticationError) as create:
        await submit(client, offer_for, spec())
    raised.append(create.value)
    with pytest.raises(errors.AuthenticationError) as poll:
        await client.get("gpt_image_2/text_to_image/abc")
    raised.append(poll.value)
    with pytest.raises(errors.AuthenticationError) as upload:
        await client.upload(LoadedImage("x", png_bytes(), "image/png", "x.png", 64, 48))
    raised.append(upload.value)
    assert create.value.accepted == "no" and poll.value.accepted == "yes"
    check = await client.free_check()
    assert not check.ok
    for error in raised:
        assert wrong not in str(error) and wrong not in repr(error)
    raw = await http.get(f"{emulator.url}/api/v1/me/balance")
    assert raw.status_code == 401 and raw.json() == {"error": "Unauthorized"}


async def test_balance_goes_down_by_what_was_billed(
    client: RunAPIClient, emulator: Any, spec: Spec, offer_for: OfferFor
) -> None:
    before = await client.free_check()
    assert before.ok and before.balance_usd == Decimal("100")
    submission = await submit(
        client,
        offer_for,
        spec(params={"model": "gpt-image-2", "aspect_ratio": "16:9", "output_resolution": "2k"}),
    )
    await finished(client, emulator, submission.poll_ref)
    after = await client.free_check()
    assert after.balance_usd == Decimal("99.90")


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "error", "accepted"),
    [
        ("create:429:retry_after=3", errors.RateLimitedError, "no"),
        ("create:503", errors.ProviderUnavailableError, "no"),
        ("create:500", errors.ProviderUnavailableError, "unknown"),
        ("create:502", errors.ProviderUnavailableError, "unknown"),
        ("create:402", errors.InsufficientCreditsError, "no"),
        ("create:401", errors.AuthenticationError, "no"),
        ("create:403", errors.AuthenticationError, "no"),
        ("create:422", errors.InvalidRequestError, "no"),
        ("create:reset", errors.SubmissionUnknownError, "unknown"),
    ],
)
async def test_create_faults_that_make_no_job(
    client: RunAPIClient,
    emulator: Any,
    spec: Spec,
    offer_for: OfferFor,
    rule: str,
    error: type[errors.ProviderError],
    accepted: str,
) -> None:
    emulator.faults.add(rule)
    with pytest.raises(error) as info:
        await submit(client, offer_for, spec())
    assert type(info.value) is error
    assert info.value.accepted == accepted
    if isinstance(info.value, errors.RateLimitedError):
        assert info.value.retry_after == 3.0
    assert emulator.app.counters.created == 0
    kind = rule.split(":")[1]
    assert emulator.app.counters.snapshot()["faults"] == {f"create:{kind}": 1}


@pytest.mark.parametrize(("rule", "error"), contract.AFTER_CREATE_FAULTS)
async def test_create_faults_after_the_job_exists_are_recovered_by_replay(
    client: RunAPIClient,
    emulator: Any,
    spec: Spec,
    offer_for: OfferFor,
    rule: str,
    error: type[errors.ProviderError],
) -> None:
    emulator.faults.add(rule.replace("create:", "create:seq="))
    task = spec()
    with pytest.raises(error) as info:
        await submit(client, offer_for, task)
    assert info.value.accepted == "unknown"
    assert emulator.app.counters.created == 1
    retried = await submit(client, offer_for, task)  # the router's retry: same key
    assert retried.replayed is True
    assert emulator.app.counters.created == 1
    done = await finished(client, emulator, retried.poll_ref)
    assert done.state is TaskState.SUCCEEDED


async def test_a_hanging_create_times_out_as_unknown_and_the_job_exists(
    make_client: Callable[..., RunAPIClient], emulator: Any, spec: Spec, offer_for: OfferFor
) -> None:
    emulator.faults.add("create:seq=hang")
    client = make_client(timeout=0.2)
    task = spec()
    with pytest.raises(errors.SubmissionUnknownError) as info:
        await submit(client, offer_for, task)
    assert info.value.accepted == "unknown"
    assert info.value.client_ref == task.task_id
    assert emulator.app.counters.created == 1
    [job] = emulator.app.app.state.emulator.book.all()
    assert job.extra["idempotency_key"] == task.idempotency_key


async def test_task_failed_and_task_stuck(
    client: RunAPIClient, emulator: Any, spec: Spec, offer_for: OfferFor
) -> None:
    emulator.faults.add("create:seq=task_failed,task_stuck")
    failing = await submit(client, offer_for, spec(key="k-1"))
    stuck = await submit(client, offer_for, spec(key="k-2"))
    failed = await finished(client, emulator, failing.poll_ref)
    assert failed.state is TaskState.FAILED and failed.error
    assert failed.image_urls == ()
    emulator.clock.advance(10_000)
    assert (await client.get(stuck.poll_ref)).state is TaskState.RUNNING
    counters = emulator.app.counters.snapshot()
    assert counters["failed"] == 1
    assert counters["billed_usd"] == Decimal(0)


@pytest.mark.parametrize(("rule", "error"), contract.POLL_FAULTS)
async def test_poll_faults_are_accepted_failures(
    client: RunAPIClient,
    emulator: Any,
    spec: Spec,
    offer_for: OfferFor,
    rule: str,
    error: type[errors.ProviderError],
) -> None:
    submission = await submit(client, offer_for, spec())
    after = await contract.check_poll_fault(
        client, emulator.faults, submission.poll_ref, rule, error
    )
    assert after.state is TaskState.QUEUED  # the next poll is fine


@pytest.mark.parametrize(
    ("rule", "error", "stored"),
    [
        ("upload:503", errors.ProviderUnavailableError, 0),
        ("upload:reset", errors.ProviderUnavailableError, 0),
        ("upload:created_500", errors.ProviderUnavailableError, 1),
        ("upload:malformed", errors.MalformedResponseError, 1),
    ],
)
async def test_upload_faults(
    client: RunAPIClient, emulator: Any, rule: str, error: type[errors.ProviderError], stored: int
) -> None:
    image = LoadedImage("x", png_bytes(), "image/png", "x.png", 64, 48)
    await contract.check_upload_fault(client, emulator.faults, image, rule, error)
    assert emulator.app.counters.uploads == stored


async def test_download_faults(
    client: RunAPIClient, emulator: Any, spec: Spec, offer_for: OfferFor, http: httpx.AsyncClient
) -> None:
    submission = await submit(client, offer_for, spec())
    [url] = (await finished(client, emulator, submission.poll_ref)).image_urls
    await contract.check_download_faults(http, emulator.faults, url)
    assert emulator.app.counters.snapshot()["faults"] == {
        "download:download_404": 1,
        "download:truncated": 1,
    }


async def test_a_closed_port_is_a_connection_failure(
    make_client: Callable[..., RunAPIClient], spec: Spec, offer_for: OfferFor
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(errors.ConnectionFailedError) as info:
        await submit(client, offer_for, spec())
    assert info.value.accepted == "no"


async def test_every_response_carries_a_request_id(
    emulator: Any, http: httpx.AsyncClient, api_key: str
) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    emulator.faults.add("poll:seq=malformed")
    responses = [
        await http.get(f"{emulator.url}/api/v1/me/balance", headers=auth),
        await http.get(f"{emulator.url}/api/v1/me/balance"),  # 401
        await http.get(f"{emulator.url}/nowhere"),  # starlette's own 404
        await http.put(f"{emulator.url}/_direct_uploads/unknown", content=b"x"),
        await http.get(f"{emulator.url}/api/v1/gpt_image_2/text_to_image/x", headers=auth),
        await http.get(f"{emulator.url}/files/unknown"),
    ]
    assert [r.status_code for r in responses] == [200, 401, 404, 404, 200, 404]
    ids = {r.headers["x-request-id"] for r in responses}
    assert len(ids) == len(responses)

"""The client against the emulator over real loopback sockets: lifecycle, statuses, shapes."""

from __future__ import annotations

import io
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from imagerouter_runflow import RunflowProvider
from imagerouter_runflow.emulator_state import RunflowEmulatorOptions
from PIL import Image

from imagerouter.emulation import EmulatorOptions, LatencyModel
from imagerouter.errors import AuthenticationError, InvalidRequestError
from imagerouter.offers import Offer
from imagerouter.provider import LoadedImage, TaskSpec, TaskState
from imagerouter.request import ImageRequest

if TYPE_CHECKING:
    from conftest import Rig

MakeOffer = Callable[..., Offer]
MakeTask = Callable[..., TaskSpec]
MakeRig = Callable[..., Awaitable["Rig"]]


async def download(rig: Rig, url: str) -> Image.Image:
    response = await rig.http.get(url)
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


async def test_a_run_goes_queued_running_succeeded_and_is_billed(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer(n=2, quality="medium", size="1024x640")
    task = make_task(offer, num_images=2)
    submission = await rig.client.submit(offer, task)
    assert submission.state is TaskState.QUEUED
    assert uuid.UUID(submission.poll_ref)
    assert submission.request_id
    assert rig.emulator.counters.created == 1

    assert (await rig.client.get(submission.poll_ref)).state is TaskState.QUEUED
    rig.clock.advance(0.005)
    assert (await rig.client.get(submission.poll_ref)).state is TaskState.RUNNING
    rig.clock.advance(0.01)
    status = await rig.client.get(submission.poll_ref)
    assert status.state is TaskState.SUCCEEDED
    assert status.billed_usd == Decimal("0.068")
    assert len(status.image_urls) == 2
    assert rig.emulator.counters.billed_usd == Decimal("0.068")
    assert rig.emulator.counters.polls == 3
    for url in status.image_urls:
        assert url.startswith(f"{rig.server.url}/files/")
        image = await download(rig, url)
        assert image.size == (1024, 640)
        assert image.format == "PNG"


async def test_billing_follows_time_not_polls(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer(quality="low")
    await rig.client.submit(offer, make_task(offer))
    assert rig.emulator.counters.billed_usd == 0
    rig.finish_runs()
    assert rig.emulator.counters.billed_usd == Decimal("0.009")


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
async def test_images_come_in_the_requested_format(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask, fmt: str, pil: str
) -> None:
    offer = make_offer(output_format=fmt, aspect_ratio="9:16")
    submission = await rig.client.submit(offer, make_task(offer))
    rig.finish_runs()
    status = await rig.client.get(submission.poll_ref)
    image = await download(rig, status.image_urls[0])
    assert image.format == pil
    assert image.size == (768, 1360)


async def test_gpt_image_15_transparent_and_billed_by_size(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer(model="gpt-image-1.5", background="transparent", size="1024x1536")
    submission = await rig.client.submit(offer, make_task(offer))
    rig.finish_runs()
    status = await rig.client.get(submission.poll_ref)
    image = await download(rig, status.image_urls[0])
    assert image.size == (1024, 1536)
    assert image.mode == "RGBA"
    assert status.billed_usd == Decimal("0.200")


async def test_auto_size_generate_uses_the_default_preset(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer(size="auto")
    submission = await rig.client.submit(offer, make_task(offer))
    rig.finish_runs()
    status = await rig.client.get(submission.poll_ref)
    assert (await download(rig, status.image_urls[0])).size == (1024, 768)


async def test_image_urls_output_shape_is_read_too(
    make_rig: MakeRig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    rig = await make_rig(output_shape="image_urls")
    offer = make_offer(n=2)
    submission = await rig.client.submit(offer, make_task(offer, num_images=2))
    rig.finish_runs()
    raw = (
        await rig.http.get(
            f"{rig.server.url}/v1/runs/{submission.poll_ref}",
            headers={"Authorization": f"Bearer {rig.key}"},
        )
    ).json()
    assert set(raw["output"]) == {"image_urls"}
    status = await rig.client.get(submission.poll_ref)
    assert status.image_urls == tuple(raw["output"]["image_urls"])
    assert len(status.image_urls) == 2


async def test_run_object_has_the_documented_fields(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer(quality="low")
    task = make_task(offer, metadata={"order": "42"})
    submission = await rig.client.submit(offer, task)
    rig.finish_runs()
    response = await rig.http.get(
        f"{rig.server.url}/v1/runs/{submission.poll_ref}",
        headers={"Authorization": f"Bearer {rig.key}"},
    )
    run = response.json()
    for field in (
        "id",
        "status_code",
        "model_id",
        "input",
        "output",
        "cost",
        "duration_ms",
        "client_ref",
        "metadata",
        "created_at",
        "started_at",
        "completed_at",
        "failure_code",
        "failure_message",
    ):
        assert field in run, field
    assert run["status_code"] == "succeeded"
    assert run["model_id"] == "openai/gpt-image-2"
    assert run["client_ref"] == task.task_id
    assert run["metadata"] == {"order": "42"}
    assert run["cost"] == "0.009"
    assert run["duration_ms"] == 10
    assert run["input"]["prompt"] == "a red fox"
    assert run["output"]["outputs"][0]["type"] == "image"
    assert run["created_at"] < run["started_at"] < run["completed_at"]


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("dispatching", TaskState.QUEUED),
        ("running", TaskState.RUNNING),
        ("canceled", TaskState.CANCELED),
        ("cancelled", TaskState.CANCELED),
        ("errored", TaskState.FAILED),
    ],
)
async def test_forced_statuses(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask, status: str, state: TaskState
) -> None:
    offer = make_offer()
    submission = await rig.client.submit(offer, make_task(offer))
    rig.state.force_status(submission.poll_ref, status)
    rig.finish_runs()
    result = await rig.client.get(submission.poll_ref)
    assert result.state is state
    assert result.image_urls == ()
    assert rig.emulator.counters.billed_usd == 0


async def test_partial_succeeded_delivers_some_images_and_bills_them(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer(n=4, quality="medium", size="1024x640")
    submission = await rig.client.submit(offer, make_task(offer, num_images=4))
    rig.state.force_status(submission.poll_ref, "partial_succeeded")
    result = await rig.client.get(submission.poll_ref)
    assert result.state is TaskState.PARTIAL
    assert len(result.image_urls) == 3
    assert result.billed_usd == Decimal("0.102")
    assert rig.emulator.counters.billed_usd == Decimal("0.102")


async def test_forced_failure_carries_code_and_message(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer()
    submission = await rig.client.submit(offer, make_task(offer))
    rig.state.force_status(
        submission.poll_ref, "failed", failure_code="NSFW", failure_message="blocked"
    )
    result = await rig.client.get(submission.poll_ref)
    assert (result.state, result.error_code, result.error) == (
        TaskState.FAILED,
        "NSFW",
        "blocked",
    )
    assert rig.emulator.counters.failed == 1


def test_force_status_rejects_unknown_statuses(rig: Rig) -> None:
    with pytest.raises(ValueError):
        rig.state.force_status("x", "exploded")
    with pytest.raises(KeyError):
        rig.state.force_status("no-such-run", "failed")


async def test_health(rig: Rig) -> None:
    check = await rig.client.free_check()
    assert check is not None and check.ok


# -- validation -----------------------------------------------------------------------------


async def test_wrong_key_is_401_unauthorized(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    client = rig.client_with(api_key="rf_live_wrong")
    offer = make_offer()
    with pytest.raises(AuthenticationError) as caught:
        await client.submit(offer, make_task(offer))
    assert caught.value.code == "UNAUTHORIZED"
    assert caught.value.status_code == 401
    with pytest.raises(AuthenticationError):
        await client.get(str(uuid.uuid4()))
    assert rig.emulator.counters.created == 0


async def test_num_images_over_the_cap_is_422(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer()
    with pytest.raises(InvalidRequestError) as caught:
        await rig.client.submit(offer, make_task(offer, num_images=5))
    assert caught.value.status_code == 422
    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.fields == {"input.num_images": ["must be an integer from 1 to 4"]}
    assert rig.emulator.counters.created == 0


async def test_a_ten_image_cap_on_both_sides_makes_one_run(
    make_rig: MakeRig, make_task: MakeTask
) -> None:
    caps = {"max_images_per_run": 10}
    rig = await make_rig(max_images_per_run=10, settings={"capabilities": caps})
    provider = RunflowProvider()
    request = ImageRequest.build(prompt="ten foxes", n=10, quality="low", size="1024x640")
    (offer,) = provider.offers(
        request,
        prices=provider.price_table(),
        capabilities={**provider.capabilities(), **caps},
    )
    assert offer.batches == (10,)
    submission = await rig.client.submit(offer, make_task(offer, num_images=10))
    rig.finish_runs()
    status = await rig.client.get(submission.poll_ref)
    assert len(status.image_urls) == 10
    assert status.billed_usd == Decimal("0.090")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"quality": "ultra"}, "input.quality"),
        ({"output_format": "gif"}, "input.output_format"),
        ({"image_size": {"width": 1000, "height": 1024}}, "input.image_size"),
        ({"image_size": {"width": 3840, "height": 3840}}, "input.image_size"),
        ({"image_size": "auto"}, "input.image_size"),
        ({"background": "transparent"}, "input.background"),
    ],
)
async def test_gpt_image_2_input_checks(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask, params: dict[str, Any], field: str
) -> None:
    offer = make_offer()
    with pytest.raises(InvalidRequestError) as caught:
        await rig.client.submit(offer, make_task(offer, params={**offer.params, **params}))
    assert field in caught.value.fields


async def test_gpt_image_15_rejects_other_sizes(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer(model="gpt-image-1.5")
    params = {**offer.params, "image_size": {"width": 1024, "height": 1024}}
    with pytest.raises(InvalidRequestError) as caught:
        await rig.client.submit(offer, make_task(offer, params=params))
    assert "input.image_size" in caught.value.fields


async def test_edit_needs_image_urls(rig: Rig, make_offer: MakeOffer, make_task: MakeTask) -> None:
    offer = make_offer(images=[b"x"])
    with pytest.raises(InvalidRequestError) as caught:
        await rig.client.submit(offer, make_task(offer))
    assert "input.image_urls" in caught.value.fields


async def test_prompt_is_required(rig: Rig, make_offer: MakeOffer, make_task: MakeTask) -> None:
    offer = make_offer()
    with pytest.raises(InvalidRequestError) as caught:
        await rig.client.submit(offer, make_task(offer, prompt=" "))
    assert "input.prompt" in caught.value.fields


async def test_unknown_model_id_is_404(
    make_rig: MakeRig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    caps = {"model_ids": {"gpt-image-2": {"generate": "openai/gpt-image-9"}}}
    rig = await make_rig(settings={"capabilities": caps})
    offer = make_offer()
    with pytest.raises(InvalidRequestError) as caught:
        await rig.client.submit(offer, make_task(offer))
    assert caught.value.status_code == 404
    assert caught.value.code == "MODEL_NOT_FOUND"
    assert caught.value.accepted == "no"


async def test_unknown_run_is_404_accepted_yes(rig: Rig) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await rig.client.get(str(uuid.uuid4()))
    assert caught.value.code == "RUN_NOT_FOUND"
    assert caught.value.accepted == "yes"


def test_plain_emulator_options_get_runflow_defaults() -> None:
    emulator = RunflowProvider().emulator(EmulatorOptions(latency=LatencyModel("fixed", 0.01)))
    assert emulator.provider == "runflow"
    assert isinstance(emulator.options, RunflowEmulatorOptions)
    assert emulator.options.max_images_per_run == 4
    assert emulator.options.output_shape == "outputs"


# -- find -----------------------------------------------------------------------------------


async def test_find_by_client_ref(rig: Rig, make_offer: MakeOffer, make_task: MakeTask) -> None:
    offer = make_offer(size="1024x640")
    tasks = [make_task(offer) for _ in range(4)]
    submissions = [await rig.client.submit(offer, task) for task in tasks]
    rig.finish_runs()
    found = await rig.client.find(tasks[1])
    assert found is not None
    assert found.poll_ref == submissions[1].poll_ref
    assert found.state is TaskState.SUCCEEDED
    assert found.billed_usd == Decimal("0.133")
    missing = make_task(offer)
    assert await rig.client.find(missing) is None


async def test_find_on_an_empty_account(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer()
    assert await rig.client.find(make_task(offer)) is None


async def test_list_runs_filters_by_q_and_pages(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer()
    for index in range(3):
        await rig.client.submit(offer, make_task(offer, prompt=f"needle {index}"))
    await rig.client.submit(offer, make_task(offer, prompt="haystack"))
    headers = {"Authorization": f"Bearer {rig.key}"}
    page = (
        await rig.http.get(
            f"{rig.server.url}/v1/runs", params={"q": "needle", "limit": 2}, headers=headers
        )
    ).json()
    assert len(page["data"]) == 2 and page["pq"] == "2"
    rest = (
        await rig.http.get(
            f"{rig.server.url}/v1/runs",
            params={"q": "needle", "limit": 2, "pq": page["pq"]},
            headers=headers,
        )
    ).json()
    assert len(rest["data"]) == 1 and rest["pq"] is None
    unauthorized = await rig.http.get(f"{rig.server.url}/v1/runs")
    assert unauthorized.status_code == 401
    assert unauthorized.json() == {
        "code": "UNAUTHORIZED",
        "message": "Missing or invalid API key",
        "errors": None,
    }


async def test_requests_carry_bearer_and_user_agent(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer()
    await rig.client.submit(offer, make_task(offer))
    request = rig.sent[-1]
    assert request.headers["authorization"] == f"Bearer {rig.key}"
    assert request.headers["user-agent"].startswith("imagerouter-runflow/")


async def test_client_does_not_close_the_shared_http_client(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer()
    await rig.client.submit(offer, make_task(offer))
    assert not rig.http.is_closed
    assert (await rig.http.get(f"{rig.server.url}/v1/health")).status_code == 200


async def test_edit_end_to_end_with_an_uploaded_input(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, "PNG")
    image = LoadedImage(
        name="red.png",
        data=buffer.getvalue(),
        mime_type="image/png",
        filename="red.png",
        width=32,
        height=32,
    )
    url = await rig.client.upload(image)
    mask_url = await rig.client.upload(image)
    offer = make_offer(images=[b"x"], mask=b"m", size="auto", quality="high")
    task = make_task(offer, input_urls=(url,), mask_url=mask_url)
    submission = await rig.client.submit(offer, task)
    rig.finish_runs()
    status = await rig.client.get(submission.poll_ref)
    assert status.state is TaskState.SUCCEEDED
    assert status.billed_usd == Decimal("0.133")
    run = rig.state.book.get(submission.poll_ref)
    assert run is not None
    assert run.extra["model_id"] == "openai/gpt-image-2/edit"
    assert run.extra["input"]["image_urls"] == [url]
    assert run.extra["input"]["mask_url"] == mask_url
    assert run.extra["input"]["image_size"] == "auto"


async def test_gpt_image_15_edit_endpoint(
    rig: Rig, make_offer: MakeOffer, make_task: MakeTask
) -> None:
    offer = make_offer(model="gpt-image-1.5", images=[b"x"], size="1536x1024", quality="low")
    task = make_task(offer, input_urls=("https://cdn.test/in.png",))
    submission = await rig.client.submit(offer, task)
    rig.finish_runs()
    status = await rig.client.get(submission.poll_ref)
    assert status.billed_usd == Decimal("0.013")
    run = rig.state.book.get(submission.poll_ref)
    assert run is not None and run.extra["model_id"] == "openai/gpt-image-1.5/edit"


def test_counters_are_exposed(rig: Rig) -> None:
    assert rig.emulator.counters is rig.state.counters
    assert isinstance(rig.emulator.app.state.emulator, type(rig.state))

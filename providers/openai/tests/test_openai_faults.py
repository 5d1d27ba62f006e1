"""The wire client against the emulator over loopback: a synchronous create that already
carries its images (decoded to temp files) and its billed cost; streamed partials; every
injected fault mapped to the error and `accepted` it deserves; the key never leaks."""

from __future__ import annotations

import io
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from imagerouter_openai.client import OpenAIClient
from PIL import Image

from imagerouter.errors import (
    AuthenticationError,
    ConnectionFailedError,
    InsufficientCreditsError,
    InvalidRequestError,
    MalformedResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    SubmissionUnknownError,
)
from imagerouter.offers import Offer
from imagerouter.provider import LoadedImage, TaskSpec, TaskState

if TYPE_CHECKING:
    from conftest import Served

MakeOffer = Callable[..., Offer]
MakeTask = Callable[..., TaskSpec]
MakeClient = Callable[..., OpenAIClient]


def png(size: int = 32) -> LoadedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), "blue").save(buffer, "PNG")
    return LoadedImage("blue.png", buffer.getvalue(), "image/png", "blue.png", size, size)


def leftovers(task: TaskSpec) -> list[str]:
    folder = Path(task.scratch_dir or ".")
    return sorted(p.name for p in folder.glob(".openai-*")) if folder.exists() else []


async def test_generate_carries_its_terminal_status_files_and_cost(
    served: Served, make_offer: MakeOffer, make_task: MakeTask, make_client: MakeClient
) -> None:
    offer = make_offer(size="1024x1024", quality="medium", n=2)
    task = make_task(offer)
    submission = await make_client().submit(offer, task)
    assert submission.state is TaskState.SUCCEEDED and submission.status is not None
    files = submission.status.image_files
    assert len(files) == 2
    for name in files:
        with Image.open(name) as image:
            assert image.size == (1024, 1024)
    # Billed from `usage`: 2 x 1,756 output tokens at $30/M plus the prompt's text tokens.
    assert submission.billed_usd == served.emulator.counters.billed_usd
    assert submission.billed_usd is not None
    assert submission.billed_usd > Decimal("0.105") > submission.billed_usd - Decimal("0.001")
    assert served.emulator.counters.created == 1


async def test_edit_sends_uploaded_inputs_as_multipart(
    served: Served, make_offer: MakeOffer, make_task: MakeTask, make_client: MakeClient
) -> None:
    offer = make_offer(images=[b"x"], size="1024x1024", quality="low")
    client = make_client()
    handles = (await client.upload(png()), await client.upload(png()))
    submission = await client.submit(offer, make_task(offer, input_urls=handles))
    assert submission.status is not None and len(submission.status.image_files) == 1
    assert served.emulator.counters.created == 1


async def test_stream_hands_partials_on_and_keeps_the_completed_image(
    served: Served, make_offer: MakeOffer, make_task: MakeTask, make_client: MakeClient
) -> None:
    offer = make_offer(size="1024x1024", quality="low")
    offer = Offer.priced(
        offer.provider,
        offer.request,  # type: ignore[arg-type]
        params={**offer.params, "stream": True, "partial_images": 3},
        batches=(1,),
        per_image_usd=offer.per_image_usd or Decimal(0),
    )
    partials: list[bytes] = []
    task = make_task(offer, on_partial=partials.append)
    submission = await make_client().submit(offer, task)
    assert submission.status is not None and len(submission.status.image_files) == 1
    assert len(partials) <= 3
    for data in partials:
        assert data.startswith(b"\x89PNG")
    assert leftovers(task) == [Path(submission.status.image_files[0]).name]


@pytest.mark.parametrize(
    ("rule", "error", "accepted", "made"),
    [
        ("create:429", RateLimitedError, "no", 0),
        ("create:402", InsufficientCreditsError, "no", 0),
        ("create:401", AuthenticationError, "no", 0),
        ("create:403", AuthenticationError, "no", 0),
        ("create:503", ProviderUnavailableError, "no", 0),
        ("create:500", ProviderUnavailableError, "unknown", 0),
        ("create:502", ProviderUnavailableError, "unknown", 0),
        ("create:422", InvalidRequestError, "no", 0),
        ("create:task_failed", InvalidRequestError, "no", 0),
        ("create:reset", SubmissionUnknownError, "unknown", 0),
        ("create:reset_after_send", SubmissionUnknownError, "unknown", 1),
        ("create:created_500", ProviderUnavailableError, "unknown", 1),
        ("create:malformed", MalformedResponseError, "unknown", 1),
        ("create:hang", SubmissionUnknownError, "unknown", 1),
    ],
)
async def test_create_faults_map_to_errors_that_say_whether_it_was_made(
    served: Served,
    make_offer: MakeOffer,
    make_task: MakeTask,
    make_client: MakeClient,
    rule: str,
    error: type[ProviderError],
    accepted: str,
    made: int,
) -> None:
    served.emulator.options.faults.add(rule)
    offer = make_offer(size="1024x1024", quality="low")
    task = make_task(offer)
    key = served.emulator.options.api_key
    with pytest.raises(error) as caught:
        await make_client(timeout=0.3).submit(offer, task)
    assert caught.value.accepted == accepted
    assert served.emulator.counters.created == made
    assert key not in str(caught.value) and key not in repr(caught.value)
    assert leftovers(task) == []  # a failed answer leaves no temp file behind


async def test_rate_limit_reads_retry_after_ms(
    served: Served, make_offer: MakeOffer, make_task: MakeTask, make_client: MakeClient
) -> None:
    served.emulator.options.faults.add("create:429@1:retry_after=2.5")
    offer = make_offer(quality="low")
    with pytest.raises(RateLimitedError) as caught:
        await make_client().submit(offer, make_task(offer))
    assert caught.value.retry_after == 2.5


async def test_a_refusal_names_the_prompt_so_it_is_never_failed_over(
    make_offer: MakeOffer, make_task: MakeTask, make_client: MakeClient
) -> None:
    from imagerouter.failures import refusal_may_differ

    offer = make_offer(quality="low", prompt="[refuse] this")
    with pytest.raises(InvalidRequestError) as caught:
        await make_client().submit(offer, make_task(offer, prompt="[refuse] this"))
    assert caught.value.code == "moderation_blocked"
    assert not refusal_may_differ(caught.value, same_provider=False)


async def test_stream_cut_after_a_partial_is_unknown_and_cleaned_up(
    served: Served, make_offer: MakeOffer, make_task: MakeTask, make_client: MakeClient
) -> None:
    served.emulator.options.faults.add("create:reset_after_send")
    offer = make_offer(quality="low")
    offer = Offer.priced(
        offer.provider,
        offer.request,  # type: ignore[arg-type]
        params={**offer.params, "stream": True, "partial_images": 2},
        batches=(1,),
        per_image_usd=Decimal("0.01"),
    )
    task = make_task(offer)
    with pytest.raises(SubmissionUnknownError) as caught:
        await make_client().submit(offer, task)
    assert caught.value.accepted == "unknown"
    assert served.emulator.counters.created == 1
    assert leftovers(task) == []


async def test_nothing_listening_is_never_sent(
    make_offer: MakeOffer, make_task: MakeTask, make_client: MakeClient
) -> None:
    offer = make_offer(quality="low")
    with pytest.raises(ConnectionFailedError) as caught:
        await make_client(base_url="http://127.0.0.1:9/v1").submit(offer, make_task(offer))
    assert caught.value.accepted == "no"

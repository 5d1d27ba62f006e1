"""Issue 12, the gateway side: OpenAI's response shape whole (usage, echoes, cost), streaming,
model aliases, OpenAI's validation, signed URLs and variations, each driven by the official
`openai` client (sync and async) over loopback, in front of the emulators."""

from __future__ import annotations

import asyncio
import base64
import io
import stat
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from PIL import Image

from imagerouter.emulated import Emulators
from imagerouter.gateway.jobs import Job
from imagerouter.gateway.openai_shapes import AnswerShape
from imagerouter.gateway.signed_urls import SECRET_FILE, UrlSigner, load_url_secret
from imagerouter.gateway.streaming import event_stream
from imagerouter.gateway.usage import estimated_usage, output_image_tokens

from .test_gateway import GATEWAY_KEY, ServeGateway, decoded, items, png_bytes, serve_gateway
from .test_gateway_jobs import slow_emulators, wait_for_job

__all__ = ["serve_gateway"]  # the fixture, imported for this module


# -- usage, echoes and cost ----------------------------------------------------------------


def test_usage_echoes_and_cost_with_the_sync_client(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    raw = served.client().images.with_raw_response.generate(
        model="gpt-image-2", prompt="a red fox", quality="low", size="1536x1024"
    )
    response = raw.parse()
    assert response.usage is not None
    # gpt-image-2 at 1536x1024, low: 158 tokens (OpenAI's calculator); "a red fox": 3 tokens.
    assert (response.usage.output_tokens, response.usage.input_tokens) == (158, 3)
    assert response.usage.total_tokens == 161
    assert response.usage.input_tokens_details.text_tokens == 3
    assert (response.quality, response.background, response.output_format) == (
        "low",
        "opaque",
        "png",
    )
    width, height = decoded(items(response)[0].b64_json).size
    assert response.size == f"{width}x{height}"  # the size served, whatever was asked
    extension = raw.http_response.json()["imagerouter"]
    cost = Decimal(raw.headers["x-imagerouter-cost-usd"])
    assert Decimal(extension["cost_usd"]) == cost > 0
    assert extension["provider"] == raw.headers["x-imagerouter-provider"]
    assert extension["request_id"] == raw.headers["x-imagerouter-request-id"]


def test_usage_with_the_async_client(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()

    async def call() -> openai.types.ImagesResponse:
        async with openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key=served.key) as client:
            return await client.images.generate(
                model="gpt-image-1.5", prompt="abcdefgh", quality="medium", background="transparent"
            )

    response = asyncio.run(call())
    assert response.usage is not None
    assert response.usage.total_tokens == 1056 + 2  # the 1.5 table: medium 1024x1024
    assert (response.quality, response.background) == ("medium", "transparent")


def test_token_tables() -> None:
    assert output_image_tokens("gpt-image-2", "high", 1024, 1024) == 7024
    assert output_image_tokens("gpt-image-2", "high", 1536, 1024) == 5488
    assert output_image_tokens("gpt-image-2", "medium", 2048, 2048) == 3568
    assert output_image_tokens("gpt-image-1.5", "high", 1024, 1536) == 6240
    # Another size on a table model: scaled by pixels from the nearest ratio.
    assert output_image_tokens("gpt-image-1.5", "low", 2048, 2048) == 272 * 4
    usage = estimated_usage(
        model="gpt-image-2", quality="low", width=1024, height=1024, images=3, prompt_chars=9
    )
    assert (usage["output_tokens"], usage["input_tokens"], usage["total_tokens"]) == (
        3 * 196,
        3,
        3 * 196 + 3,
    )


def test_output_compression_is_applied_locally(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    client = served.client()
    full = client.images.generate(prompt="a fox", output_format="jpeg", quality="low")
    squeezed = client.images.generate(
        prompt="a fox", output_format="jpeg", quality="low", output_compression=5
    )
    full_bytes = base64.b64decode(items(full)[0].b64_json or "")
    small_bytes = base64.b64decode(items(squeezed)[0].b64_json or "")
    assert decoded(items(squeezed)[0].b64_json).format == "JPEG"
    assert len(small_bytes) < len(full_bytes)
    ledger = served.router.ledger
    assert ledger is not None
    newest = ledger.history(limit=1)[0]
    (saved,) = ledger.request_detail(newest.request_id)["images"]
    assert Path(saved["path"]).read_bytes() != small_bytes  # the paid original is kept


# -- validation as OpenAI does -------------------------------------------------------------


def test_a_mask_of_another_size_or_not_a_png_is_a_400(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    client = serve_gateway().client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            image=("a.png", png_bytes((64, 48)), "image/png"),
            mask=("m.png", png_bytes((32, 32)), "image/png"),
            prompt="x",
        )
    assert (caught.value.param, caught.value.code) == ("mask", "invalid_image")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48)).save(jpeg, "JPEG")
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            image=("a.png", png_bytes((64, 48)), "image/png"),
            mask=("m.jpg", jpeg.getvalue(), "image/jpeg"),
            prompt="x",
        )
    assert (caught.value.param, caught.value.code) == ("mask", "invalid_image_format")
    assert emulators.created() == {"runapi": 0, "runflow": 0}


def test_form_numbers_are_text_and_accepted_in_edits(serve_gateway: ServeGateway) -> None:
    response = (
        serve_gateway()
        .client()
        .images.edit(
            image=("a.png", png_bytes(), "image/png"),
            prompt="x",
            n=2,
            output_compression=90,
            input_fidelity="high",
            quality="low",
        )
    )
    assert len(items(response)) == 2


# -- aliases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "served"),
    [
        ("gpt-image-2-2026-04-21", "gpt-image-2"),
        ("chatgpt-image-latest", "gpt-image-1.5"),
        ("gpt-image-1.5-2025-12-16", "gpt-image-1.5"),
        ("house-style", "gpt-image-1.5"),
    ],
)
def test_snapshots_and_aliases_map_to_families(
    serve_gateway: ServeGateway, model: str, served: str
) -> None:
    gateway = serve_gateway({"gateway": {"model_aliases": {"house-style": "gpt-image-1.5"}}})
    raw = gateway.client().images.with_raw_response.generate(model=model, prompt="a fox")
    assert raw.headers["x-imagerouter-model"] == served


def test_an_alias_may_name_a_tier(serve_gateway: ServeGateway) -> None:
    gateway = serve_gateway({"gateway": {"model_aliases": {"cheap": "draft"}}})
    raw = gateway.client().images.with_raw_response.generate(model="cheap", prompt="a fox")
    assert raw.headers["x-imagerouter-provider"] == "runflow"  # the draft tier's backend


# -- signed URLs ---------------------------------------------------------------------------


def test_signed_urls_work_without_a_key_and_refuse_tampering_and_expiry(
    serve_gateway: ServeGateway,
) -> None:
    served = serve_gateway({"gateway": {"url_ttl_s": 60}})
    response = served.client().images.generate(prompt="a fox", response_format="url")
    url = items(response)[0].url
    assert url is not None
    with httpx.Client(timeout=10) as plain:
        fetched = plain.get(url)
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(fetched.content)).size == (1024, 1024)
        parts = urlsplit(url)
        tampered = (
            url.replace("sig=", "sig=0") if "sig=0" not in url else url.replace("sig=0", "sig=1")
        )
        assert plain.get(tampered).status_code == 403
        later = url.replace("expires=", "expires=9")  # a longer life is a tampered one
        assert plain.get(later).status_code == 403
        other = f"{parts.scheme}://{parts.netloc}/v1/signed/../ledger.db?{parts.query}"
        assert plain.get(other).status_code in (403, 404)
        signer = served.gateway.signer
        now = signer.clock()
        signer.clock = lambda: now + 61  # past url_ttl_s
        expired = plain.get(url)
        assert expired.status_code == 403
        assert expired.json()["error"]["code"] == "url_expired"


def test_the_url_secret_survives_restarts_and_stays_private(
    tmp_path: Path, isolated_home: Path
) -> None:
    first = load_url_secret(None)
    assert load_url_secret(None) == first  # a restart signs with the same secret
    secret_file = isolated_home / SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    image = tmp_path / "out" / "a.png"
    image.parent.mkdir()
    image.write_bytes(png_bytes())
    old = UrlSigner(first, image.parent, ttl_s=3600, clock=lambda: 1000.0)
    url = old.url("http://gw", image)
    assert url is not None
    query = dict(part.split("=") for part in urlsplit(url).query.split("&"))
    restarted = UrlSigner(load_url_secret(None), image.parent, ttl_s=3600, clock=lambda: 1001.0)
    assert restarted.check("a.png", query["expires"], query["sig"]) == image.resolve()
    assert first.decode() not in repr(restarted)
    assert load_url_secret("configured-secret-value") == b"configured-secret-value"


# -- variations ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks it deprecated
def test_create_variation_is_openais_400(serve_gateway: ServeGateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        serve_gateway().client().images.create_variation(
            image=("a.png", png_bytes((64, 64)), "image/png")
        )
    assert caught.value.status_code == 400
    assert caught.value.param == "model"


# -- streaming -----------------------------------------------------------------------------


def test_streaming_a_generation_with_the_sync_client(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway()
    stream = served.client().images.generate(
        prompt="a fox", stream=True, partial_images=2, quality="low"
    )
    events = list(stream)
    # The emulated backends do not stream: no partials, then the image (OpenAI allows 0..N).
    assert [event.type for event in events] == ["image_generation.completed"]
    (done,) = events
    assert done.usage.total_tokens == 196 + 2
    assert decoded(done.b64_json).size == (1024, 1024)
    assert (done.quality, done.size, done.output_format) == ("low", "1024x1024", "png")
    assert emulators.created() == {"runapi": 0, "runflow": 1}


def test_streaming_an_edit_with_the_async_client(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()

    async def call() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key=served.key) as client:
            stream = await client.images.edit(
                image=("a.png", png_bytes(), "image/png"), prompt="make it blue", stream=True, n=2
            )
            return [event async for event in stream]

    events = asyncio.run(call())
    assert [event.type for event in events] == ["image_edit.completed"] * 2
    assert all(decoded(event.b64_json).format == "PNG" for event in events)


def test_a_failed_streamed_job_ends_with_an_error_event(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    from imagerouter.emulation import FaultPlan

    for app in emulators.apps.values():
        app.options.faults = FaultPlan.parse("create:task_failed")
    served = serve_gateway({"routing": {"max_attempts": 2}})
    stream = served.client(max_retries=0).images.generate(prompt="a fox", stream=True)
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert "imagerouter request id" in caught.value.message


def test_a_stream_client_that_disconnects_does_not_lose_the_job(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    slow_emulators(emulators, 0.5)
    served = serve_gateway()
    with (
        httpx.Client(
            base_url=served.url,
            timeout=httpx.Timeout(5.0, read=0.1),
            headers={"authorization": f"Bearer {GATEWAY_KEY}"},
        ) as impatient,
        pytest.raises(httpx.ReadTimeout),
        impatient.stream(
            "POST", "/v1/images/generations", json={"prompt": "a slow fox", "stream": True}
        ) as response,
    ):
        assert response.status_code == 200
        for _ in response.iter_bytes():
            pass
    deadline = time.monotonic() + 10
    while not served.gateway.jobs.recent(1):
        assert time.monotonic() < deadline, "the gateway never started the job"
        time.sleep(0.02)
    (job,) = served.gateway.jobs.recent(1)
    assert wait_for_job(served, job.id)["status"] == "succeeded"
    ledger = served.router.ledger
    assert ledger is not None
    (row,) = ledger.history()
    assert (row.status, row.images) == ("served", 1)
    assert sum(emulators.created().values()) == 1  # nothing was resent


class _Partial:
    """A progress note as a streaming backend gives it (with the partial image's bytes)."""

    def __init__(self, data: bytes) -> None:
        self.partial_image = data


def test_partials_are_passed_through_up_to_partial_images() -> None:
    shape = AnswerShape(
        operation="generate",
        prompt_chars=4,
        quality="low",
        background="auto",
        output_compression=None,
        stream=True,
        partial_images=2,
    )

    async def run() -> list[bytes]:
        job = Job(
            id="imgjob_x",
            operation="generate",
            requested_model=None,
            response_format="b64_json",
            user=None,
            created=0.0,
            shape=shape,
        )
        response = event_stream(job, {})
        chunks: list[bytes] = []

        async def read() -> None:
            async for chunk in response.body_iterator:
                chunks.append(chunk if isinstance(chunk, bytes) else chunk.encode())

        reader = asyncio.create_task(read())
        for n in range(3):  # three partials arrive; two were asked for
            job.note_progress(_Partial(f"partial-{n}".encode()))  # type: ignore[arg-type]
            await asyncio.sleep(0)
        job.status = "failed"
        from imagerouter.gateway.errors import ApiError

        job.error = ApiError(502, "gave up", type="server_error", code="job_failed")
        job.changed.set()
        await reader
        return chunks

    chunks = asyncio.run(run())
    text = b"".join(chunks).decode()
    assert text.count("event: image_generation.partial_image") == 2
    assert base64.b64encode(b"partial-0").decode() in text
    assert base64.b64encode(b"partial-2").decode() not in text
    assert text.rstrip().splitlines()[-2] == "event: error"

"""RunAPI's official Python SDKs (runapi-gpt-image-2, runapi-gpt-image) against the emulator.

A client nobody here wrote is the best check that the emulator speaks RunAPI's protocol:
create, get and run() for both models and both actions, the SDK's files client (the direct
prepare / PUT / confirm flow and the base64 flow), the balance, idempotent replay, and the
SDK's own exceptions for 401 / 422 / 429 and failed tasks.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

pytest.importorskip("runapi.gpt_image_2")
pytest.importorskip("runapi.gpt_image")

import runapi.core.resource
from runapi.core import (
    AuthenticationError,
    ConflictError,
    PollingOptions,
    RateLimitError,
    RequestOptions,
    TaskFailedError,
    ValidationError,
)
from runapi.gpt_image import GptImageClient
from runapi.gpt_image_2 import GptImage2Client


@pytest.fixture(autouse=True)
def fast_sdk_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """run() polls with PollingOptions() (2 s apart); 10 ms keeps these tests quick."""
    monkeypatch.setattr(
        runapi.core.resource,
        "PollingOptions",
        lambda: PollingOptions(poll_interval=0.01, max_wait=10),  # type: ignore[arg-type]
    )


@pytest.fixture
def sdk2(realtime_emulator: Any, api_key: str) -> Iterator[GptImage2Client]:
    client = GptImage2Client(api_key=api_key, base_url=realtime_emulator.url, max_retries=0)
    yield client
    client._http.close()


@pytest.fixture
def sdk15(realtime_emulator: Any, api_key: str) -> Iterator[GptImageClient]:
    client = GptImageClient(api_key=api_key, base_url=realtime_emulator.url, max_retries=0)
    yield client
    client._http.close()


def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "input.png"
    Image.new("RGB", (40, 30), (10, 120, 200)).save(path, "PNG")
    return path


def image_size(url: str) -> tuple[int, int]:
    response = httpx.get(url)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)).size


def test_gpt_image_2_create_get_and_run(sdk2: GptImage2Client, realtime_emulator: Any) -> None:
    task = sdk2.text_to_image.create(model="gpt-image-2", prompt="a cat", aspect_ratio="3:2",
                                     output_resolution="1k")
    assert task.status in ("pending", "processing")
    assert task.task_replayed is False
    assert task.response_headers.get("x-request-id")
    assert sdk2.text_to_image.get(task.id).id == task.id

    done = sdk2.text_to_image.run(model="gpt-image-2", prompt="a dog", aspect_ratio="16:9")
    assert done.status == "completed"
    assert done.usage.cost == pytest.approx(0.06)
    assert done.billing.settlement.charged_amount_cents == 6
    assert image_size(done.images[0].url) == (1360, 768)
    assert realtime_emulator.app.counters.created == 2


def test_gpt_image_2_edit_with_a_file_uploaded_through_the_sdk(
    sdk2: GptImage2Client, realtime_emulator: Any, tmp_path: Path
) -> None:
    path = png_file(tmp_path)
    uploaded = sdk2.files.create(file=str(path))  # prepare -> PUT -> confirm
    assert uploaded.url.startswith(realtime_emulator.url + "/files/")
    assert uploaded.size_bytes == path.stat().st_size
    assert uploaded.mime_type == "image/png"
    assert httpx.get(uploaded.url).content == path.read_bytes()

    done = sdk2.edit_image.run(model="gpt-image-2", prompt="make it red",
                               source_image_urls=[uploaded.url], aspect_ratio="1:1",
                               output_resolution="2k")
    assert done.status == "completed"
    assert image_size(done.images[0].url) == (2048, 2048)
    counters = realtime_emulator.app.counters.snapshot()
    assert counters["uploads"] == 1 and counters["created"] == 1


def test_gpt_image_15_text_and_edit(
    sdk15: GptImageClient, realtime_emulator: Any, tmp_path: Path
) -> None:
    task = sdk15.text_to_image.create(model="gpt-image-1.5", prompt="a kite",
                                      aspect_ratio="2:3", quality="medium")
    assert sdk15.text_to_image.get(task.id).status in ("pending", "processing", "completed")
    done = sdk15.text_to_image.run(model="gpt-image-1.5", prompt="a kite",
                                   aspect_ratio="3:2", quality="high")
    assert image_size(done.images[0].url) == (1536, 1024)
    assert done.usage.cost == pytest.approx(0.04)

    encoded = base64.b64encode(png_file(tmp_path).read_bytes()).decode()
    uploaded = sdk15.files.create(source=encoded, file_name="in.png")  # POST /api/v1/files
    assert uploaded.file_name == "in.png"
    edited = sdk15.edit_image.run(model="gpt-image-1.5", prompt="sharper",
                                  source_image_urls=[uploaded.url], aspect_ratio="1:1",
                                  quality="medium")
    assert image_size(edited.images[0].url) == (1024, 1024)
    assert sdk15.edit_image.get(edited.id).status == "completed"


def test_url_sources_are_registered(sdk2: GptImage2Client) -> None:
    uploaded = sdk2.files.create(source="https://example.com/cat.png")
    assert uploaded.url == "https://example.com/cat.png"
    assert uploaded.mime_type == "image/png"


def test_idempotency_key_replays_through_the_sdk(
    sdk2: GptImage2Client, realtime_emulator: Any
) -> None:
    options = RequestOptions(headers={"Idempotency-Key": "sdk-key-1"})
    first = sdk2.text_to_image.create(options=options, model="gpt-image-2", prompt="a boat")
    again = sdk2.text_to_image.create(options=options, model="gpt-image-2", prompt="a boat")
    assert again.id == first.id and again.task_replayed is True
    with pytest.raises(ConflictError):
        sdk2.text_to_image.create(options=options, model="gpt-image-2", prompt="a ship")
    assert realtime_emulator.app.counters.created == 1


def test_balance_through_the_sdk(sdk2: GptImage2Client) -> None:
    balance = sdk2.account.balance()
    assert balance.balance_cents == 10_000
    assert sdk2.account.info().email.endswith(".invalid")


def test_sdk_raises_its_own_errors(sdk2: GptImage2Client, realtime_emulator: Any) -> None:
    wrong = GptImage2Client(api_key="sk-wrong", base_url=realtime_emulator.url, max_retries=0)
    with pytest.raises(AuthenticationError) as auth:
        wrong.text_to_image.create(model="gpt-image-2", prompt="x")
    assert auth.value.status == 401
    wrong._http.close()

    with pytest.raises(ValidationError) as invalid:
        sdk2.text_to_image.create(model="gpt-image-2")
    assert invalid.value.status == 422
    assert invalid.value.details["errors"] == {"prompt": ["is required"]}

    with pytest.raises(ValidationError):
        sdk2.text_to_image.create(model="gpt-image-2", prompt="x", aspect_ratio="1:1",
                                  output_resolution="4k")

    realtime_emulator.faults.add("create:seq=429:retry_after=2")
    with pytest.raises(RateLimitError) as limited:
        sdk2.text_to_image.create(model="gpt-image-2", prompt="x")
    assert limited.value.retry_after == 2.0
    assert realtime_emulator.app.counters.created == 0


def test_sdk_run_raises_task_failed(sdk2: GptImage2Client, realtime_emulator: Any) -> None:
    realtime_emulator.faults.add("create:seq=task_failed")
    with pytest.raises(TaskFailedError) as failed:
        sdk2.text_to_image.run(model="gpt-image-2", prompt="x")
    assert "failed" in str(failed.value).lower()

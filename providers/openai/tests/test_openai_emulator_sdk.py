"""The official `openai` Python client drives the emulator over loopback: generations,
multipart edits, streamed partial images, usage, and errors in OpenAI's shape."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import openai
import pytest
from PIL import Image

if TYPE_CHECKING:
    from conftest import Served


def client_for(served: Served, key: str | None = None) -> openai.OpenAI:
    key = key or served.emulator.options.api_key
    return openai.OpenAI(api_key=key, base_url=served.url, max_retries=0, timeout=10)


def decoded(b64: str | None) -> Image.Image:
    assert b64 is not None
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def png_bytes(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (10, 120, 200) if mode == "RGB" else (0, 0, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def test_generate_returns_base64_images_and_usage(served: Served) -> None:
    result = client_for(served).images.generate(
        model="gpt-image-2", prompt="a red fox", size="1536x1024", quality="low", n=2
    )
    assert result.data is not None and len(result.data) == 2
    image = decoded(result.data[0].b64_json)
    assert image.size == (1536, 1024) and image.format == "PNG"
    assert result.usage is not None
    assert result.usage.output_tokens == 2 * 158  # the price table's count for low 1536x1024
    assert result.size == "1536x1024" and result.quality == "low"
    assert served.emulator.counters.created == 1
    assert served.emulator.counters.billed_usd > 0


def test_generate_jpeg_transparent_is_a_400_in_openai_shape(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(served).images.generate(
            model="gpt-image-2", prompt="x", background="transparent", output_format="jpeg"
        )
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "background"
    assert served.emulator.counters.created == 0


def test_edit_multipart_with_several_images_and_a_mask(served: Served) -> None:
    result = client_for(served).images.edit(
        model="gpt-image-2",
        image=[("a.png", png_bytes(), "image/png"), ("b.png", png_bytes(), "image/png")],
        mask=("mask.png", png_bytes(mode="RGBA"), "image/png"),
        prompt="add a hat",
        size="1024x1024",
        quality="medium",
    )
    assert result.data is not None
    assert decoded(result.data[0].b64_json).size == (1024, 1024)
    assert result.usage is not None and result.usage.input_tokens_details.image_tokens > 0


def test_streamed_generation_sends_partials_then_completed(served: Served) -> None:
    stream = client_for(served).images.generate(
        model="gpt-image-2",
        prompt="a red fox",
        size="1024x1024",
        quality="low",
        stream=True,
        partial_images=2,
    )
    kinds = [event.type for event in stream]
    assert kinds[-1] == "image_generation.completed"
    partials = kinds[:-1]
    assert set(partials) <= {"image_generation.partial_image"} and len(partials) <= 2


def test_streamed_edit_uses_the_edit_event_names(served: Served) -> None:
    stream = client_for(served).images.edit(
        model="gpt-image-2",
        image=("a.png", png_bytes(), "image/png"),
        prompt="a hat",
        stream=True,
        partial_images=1,
    )
    events = list(stream)
    assert events[-1].type == "image_edit.completed"
    assert events[-1].usage is not None


def test_wrong_key_is_a_401(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError):
        client_for(served, key="sk-wrong").images.generate(model="gpt-image-2", prompt="x")


def test_unknown_model_and_bad_size_are_refused(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(served).images.generate(model="dall-e-3", prompt="x")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(served).images.generate(model="gpt-image-2", prompt="x", size="1000x1000")
    assert caught.value.param == "size"


def test_content_refusal_has_openais_moderation_shape(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(served).images.generate(model="gpt-image-2", prompt="[refuse] something")
    assert caught.value.code == "moderation_blocked"
    assert caught.value.type == "image_generation_user_error"


def test_rate_limit_fault_carries_retry_after(served: Served) -> None:
    served.emulator.options.faults.add("create:429@1:retry_after=3")
    with pytest.raises(openai.RateLimitError) as caught:
        client_for(served).images.generate(model="gpt-image-2", prompt="x")
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.response.headers["retry-after-ms"] == "3000"
    assert served.emulator.counters.faults == {"create:429": 1}

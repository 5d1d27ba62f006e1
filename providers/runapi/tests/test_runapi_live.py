"""Opt-in tests against the real runapi.ai: they run only when RUNAPI_API_KEY is set, and
the paid one makes exactly one 1k gpt-image-2 image (about $0.06)."""

from __future__ import annotations

import asyncio
import io
import os

import httpx
import pytest
from imagerouter_runapi import RunAPIProvider
from PIL import Image

from imagerouter.provider import ProviderSettings, TaskSpec
from imagerouter.request import ImageRequest

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not os.environ.get("RUNAPI_API_KEY"), reason="RUNAPI_API_KEY is not set"),
]


def test_live_quote_needs_no_network() -> None:
    provider = RunAPIProvider()
    request = ImageRequest.build(prompt="a paper boat", aspect_ratio="1:1", resolution="1k")
    [offer] = provider.offers(
        request, prices=provider.price_table(), capabilities=provider.capabilities()
    )
    assert offer.eligible and offer.total_usd is not None and offer.total_usd > 0


async def test_live_balance_and_one_1k_text_to_image() -> None:
    provider = RunAPIProvider()
    request = ImageRequest.build(prompt="a paper boat on a pond, watercolor",
                                 aspect_ratio="1:1", resolution="1k")
    [offer] = provider.offers(
        request, prices=provider.price_table(), capabilities=provider.capabilities()
    )
    async with httpx.AsyncClient() as http:
        client = provider.client(ProviderSettings(timeout=60), http)
        check = await client.free_check()
        assert check.ok, check.detail
        task = TaskSpec(
            task_id=f"live-{os.getpid()}",
            idempotency_key=f"imagerouter-live-{os.getpid()}-{id(request)}",
            prompt=request.prompt,
            model=request.model,
            operation=request.operation,
            num_images=1,
            params=offer.params,
        )
        submission = await client.submit(offer, task)
        status = await client.get(submission.poll_ref)
        for _ in range(180):  # up to 15 minutes, RunAPI's own default
            if status.terminal:
                break
            await asyncio.sleep(5)
            status = await client.get(submission.poll_ref)
        assert status.state.produced_images, status.error
        response = await http.get(status.image_urls[0])
        response.raise_for_status()
        image = Image.open(io.BytesIO(response.content))
        assert max(image.size) <= 1536

"""Opt-in checks against the real Runflow API. Skipped unless RUNFLOW_API_KEY is set.

The generation test spends real money (one low-quality 1024x1024 gpt-image-2 image, $0.009 at
the shipped prices); the health check is free.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import httpx
import pytest
from imagerouter_runflow import RunflowProvider

from imagerouter.provider import ProviderSettings, TaskSpec, TaskState
from imagerouter.request import ImageRequest

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not os.environ.get("RUNFLOW_API_KEY"), reason="RUNFLOW_API_KEY is not set"),
]


async def test_live_health() -> None:
    provider = RunflowProvider()
    async with httpx.AsyncClient() as http:
        check = await provider.client(ProviderSettings(), http).free_check()
    assert check is not None and check.ok, check


async def test_live_generate_poll_and_find() -> None:
    provider = RunflowProvider()
    request = ImageRequest.build(prompt="a small red circle on white", quality="low")
    (offer,) = provider.offers(
        request, prices=provider.price_table(), capabilities=provider.capabilities()
    )
    task = TaskSpec(
        task_id=f"imagerouter-live-{uuid.uuid4()}",
        idempotency_key=str(uuid.uuid4()),
        prompt=request.prompt,
        model=offer.model,
        operation=offer.operation,
        num_images=1,
        params=offer.params,
    )
    async with httpx.AsyncClient() as http:
        client = provider.client(ProviderSettings(timeout=30), http)
        submission = await client.submit(offer, task)
        status = await client.get(submission.poll_ref)
        for _ in range(60):  # the docs advise polling every 2 s; p95 is about 30 s
            if status.terminal:
                break
            await asyncio.sleep(2)
            status = await client.get(submission.poll_ref)
        assert status.state is TaskState.SUCCEEDED, status.error
        assert status.image_urls
        found = await client.find(task)
    # Informative rather than required: whether GET /v1/runs can find by client_ref is
    # exactly what this run checks.
    if found is not None:
        assert found.poll_ref == submission.poll_ref

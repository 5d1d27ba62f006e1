"""The main job end to end: Router -> provider plugin -> emulator over loopback -> files."""

from __future__ import annotations

import asyncio
import hashlib
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image

from imagerouter import ImageRouterError, NoEligibleOfferError
from imagerouter.emulated import Emulators

from .conftest import MakeRouter


def _check_image(path: Path, sha256: str, fmt: str) -> tuple[int, int]:
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256
    with Image.open(path) as image:
        assert image.format.lower() == {"jpeg": "jpeg"}.get(fmt, fmt)
        return image.size


def test_default_request_goes_to_the_cheapest_backend(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    # No quality: RunAPI gpt-image-2 1k ($0.06) beats Runflow at its default high ($0.133).
    router = make_router()
    result = router.generate("a lighthouse at dusk")
    assert result.provider == "runapi" and result.model == "gpt-image-2"
    assert result.cost_usd == Decimal("0.06")
    assert len(result.images) == 1
    image = result.images[0]
    assert _check_image(image.path, image.sha256, "png") == (image.width, image.height)
    assert (image.width, image.height) == (1024, 1024)
    assert emulators.created() == {"runapi": 1, "runflow": 0}
    assert result.attempts[0].outcome == "served"


def test_low_quality_fans_out_runs_on_runflow(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    router = make_router()
    result = router.generate("ten drafts", quality="low", n=5, output_format="jpeg")
    assert result.provider == "runflow"
    assert len(result.images) == 5
    assert emulators.created() == {"runapi": 0, "runflow": 2}  # 4 + 1 images per run cap
    assert result.cost_usd == Decimal("0.045")
    assert len({image.path for image in result.images}) == 5
    for image in result.images:
        _check_image(image.path, image.sha256, "jpeg")
    assert result.billed_usd == Decimal("0.045")  # the emulator reports cost per run


@pytest.mark.parametrize(("quality", "provider"), [("medium", "runflow"), ("high", "runapi")])
def test_gpt_image_15_routes_by_price(
    make_router: MakeRouter, emulators: Emulators, quality: str, provider: str
) -> None:
    # 1:1 medium: Runflow $0.034 < RunAPI $0.04; high: RunAPI $0.04 < Runflow $0.133.
    router = make_router()
    result = router.generate("a cat", model="gpt-image-1.5", quality=quality, aspect_ratio="1:1")
    assert result.provider == provider
    assert result.model == "gpt-image-1.5"
    assert (result.images[0].width, result.images[0].height) == (1024, 1024)
    assert emulators.created()[provider] == 1


def test_gpt_image_15_landscape_costs_more_on_runflow(make_router: MakeRouter) -> None:
    # 3:2 medium on Runflow is $0.050 (1536x1024), so RunAPI's flat $0.04 wins.
    router = make_router()
    result = router.generate("a cat", model="gpt-image-1.5", quality="medium", aspect_ratio="3:2")
    assert result.provider == "runapi"
    assert (result.images[0].width, result.images[0].height) == (1536, 1024)


def test_edit_uploads_local_file_then_edits(
    make_router: MakeRouter, emulators: Emulators, input_png: Path
) -> None:
    router = make_router()
    result = router.edit("make it blue", images=[input_png])
    assert result.provider == "runapi" and result.operation == "edit"
    assert emulators.apps["runapi"].counters.uploads >= 1
    assert result.images[0].path.exists()


def test_edit_with_mask_goes_where_masks_are_supported(
    make_router: MakeRouter, emulators: Emulators, input_png: Path
) -> None:
    router = make_router()
    result = router.edit("fill the hole", images=[input_png], mask=input_png, quality="medium")
    assert result.provider == "runflow"
    assert emulators.apps["runflow"].counters.uploads >= 2  # image and mask
    assert emulators.created() == {"runapi": 0, "runflow": 1}


def test_format_is_converted_locally_when_the_backend_cannot(make_router: MakeRouter) -> None:
    router = make_router()
    result = router.generate("a tree", output_format="webp")
    assert result.provider == "runapi"
    image = result.images[0]
    assert image.format == "webp" and image.converted_from == "png"
    assert image.path.suffix == ".webp"
    _check_image(image.path, image.sha256, "webp")
    assert any("convert" in note for note in result.notes)


def test_providers_allow_list_is_respected(make_router: MakeRouter, emulators: Emulators) -> None:
    router = make_router()
    result = router.generate("a boat on a lake", providers=["runflow"])
    assert result.provider == "runflow"
    assert emulators.created()["runapi"] == 0


def test_no_eligible_backend_explains_every_reason(make_router: MakeRouter) -> None:
    router = make_router()
    with pytest.raises(NoEligibleOfferError) as caught:
        router.generate("a red fox", model="gpt-image-1.5", quality="low", resolution="4k")
    text = str(caught.value)
    assert "runapi" in text and "runflow" in text


def test_tier_picks_cheapest_variant(make_router: MakeRouter, emulators: Emulators) -> None:
    router = make_router(
        {
            "tiers": {
                "house": [
                    {"provider": "runapi", "model": "gpt-image-1.5", "quality": "medium"},
                    {"provider": "runflow", "model": "gpt-image-2", "quality": "medium"},
                ]
            }
        }
    )
    result = router.generate("a fox", tier="house")
    # Runflow gpt-image-2 medium $0.034 < RunAPI gpt-image-1.5 $0.04
    assert (result.provider, result.model, result.tier) == ("runflow", "gpt-image-2", "house")


def test_ledger_has_the_whole_story(make_router: MakeRouter, tmp_path: Path) -> None:
    router = make_router()
    result = router.generate("a lamp", quality="medium")
    assert router.ledger is not None
    detail = router.ledger.request_detail(result.request_id)
    text = repr(detail)
    assert result.images[0].sha256 in text
    assert str(result.images[0].path) in text
    assert "served" in text


async def test_sync_call_inside_a_loop_points_to_the_async_twin(make_router: MakeRouter) -> None:
    router = make_router()
    with pytest.raises(ImageRouterError, match="agenerate"):
        router.generate("a red fox")


async def test_async_twins_run_concurrently(make_router: MakeRouter, emulators: Emulators) -> None:
    router = make_router()
    results = await asyncio.gather(*[router.agenerate(f"image {i}") for i in range(4)])
    assert len({r.request_id for r in results}) == 4
    assert emulators.created()["runapi"] == 4
    await router.aclose()


@pytest.mark.parametrize(("quality", "provider"), [("medium", "runflow"), ("high", "runapi")])
def test_gpt_image_15_edit_on_both_providers(
    make_router: MakeRouter, emulators: Emulators, input_png: Path, quality: str, provider: str
) -> None:
    router = make_router()
    result = router.edit("make it blue", images=[input_png], model="gpt-image-1.5", quality=quality)
    assert (result.provider, result.model, result.operation) == (provider, "gpt-image-1.5", "edit")
    assert emulators.created()[provider] == 1
    assert emulators.apps[provider].counters.uploads >= 1


def test_gpt_image_2_edit_on_runflow(
    make_router: MakeRouter, emulators: Emulators, input_png: Path
) -> None:
    router = make_router()
    result = router.edit("make it blue", images=[input_png, input_png.read_bytes()], quality="low")
    assert (result.provider, result.model, result.operation) == ("runflow", "gpt-image-2", "edit")
    assert emulators.apps["runflow"].counters.uploads >= 2


async def test_a_callback_nudge_makes_the_router_poll_now(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    from imagerouter.emulation import LatencyModel

    emulators.apps["runapi"].options.latency = LatencyModel("fixed", 0.05)
    # Poll only every 30 s, so finishing quickly needs the nudge.
    router = make_router(
        {"providers": {"runapi": {"poll_interval": 30}}},
        sleep=asyncio.sleep,
        callback_base_url="https://gateway.example",
    )
    job = asyncio.ensure_future(router.agenerate("a red fox"))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if router.waiters:
            break
    ((provider, task_id),) = router.waiters
    assert router.nudge("runflow", task_id) is False  # wrong provider: ignored
    await asyncio.sleep(0.1)  # the job is done at the provider now
    assert router.nudge(provider, task_id) is True
    result = await asyncio.wait_for(job, timeout=5)
    assert result.provider == "runapi"
    assert not router.waiters
    await router.aclose()


def test_edit_within_a_tier(make_router: MakeRouter, input_png: Path) -> None:
    router = make_router()
    result = router.edit("make it blue", images=[input_png], tier="draft")
    assert result.operation == "edit" and result.tier == "draft"


def test_input_over_every_upload_cap_is_named_before_any_call(
    make_router: MakeRouter, emulators: Emulators, input_png: Path
) -> None:
    from imagerouter import InputImageError

    small = {"capabilities": {"max_upload_bytes": 10}}
    router = make_router({"providers": {"runapi": small, "runflow": small}})
    with pytest.raises(InputImageError) as caught:
        router.edit("make it blue", images=[input_png])
    assert str(input_png) in str(caught.value) and "upload cap of 10 bytes" in str(caught.value)
    assert emulators.created() == {"runapi": 0, "runflow": 0}
    assert emulators.apps["runapi"].counters.uploads == 0


def test_input_over_one_cap_goes_to_the_other_provider(
    make_router: MakeRouter, emulators: Emulators, input_png: Path
) -> None:
    router = make_router({"providers": {"runapi": {"capabilities": {"max_upload_bytes": 10}}}})
    result = router.edit("make it blue", images=[input_png])
    assert result.provider == "runflow"
    assert emulators.created() == {"runapi": 0, "runflow": 1}

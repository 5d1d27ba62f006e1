"""Runflow's offers: request -> input fields, run split, eligibility reasons and prices."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from imagerouter_runflow import RunflowProvider
from imagerouter_runflow.mapping import SizeRules, size_problem, split_runs

from imagerouter.offers import Offer
from imagerouter.plugins import Plugins
from imagerouter.pricing import PriceTable
from imagerouter.request import ImageRequest

PROVIDER = RunflowProvider()


def offer(caps: dict[str, Any] | None = None, prices: PriceTable | None = None, **kw: Any) -> Offer:
    request = ImageRequest.build(prompt="a red fox", **kw)
    capabilities = {**PROVIDER.capabilities(), **(caps or {})}
    offers = PROVIDER.offers(
        request, prices=prices or PROVIDER.price_table(), capabilities=capabilities
    )
    assert len(offers) == 1
    return offers[0]


def edit(**kw: Any) -> Offer:
    return offer(images=[b"fake-bytes"], **kw)


# -- plugin wiring --------------------------------------------------------------------------


def test_entry_point_registers_the_provider() -> None:
    plugins = Plugins.load()
    provider = plugins.providers()["runflow"]
    assert isinstance(provider, RunflowProvider)
    assert provider.version == "0.1.0"


def test_provider_class_attributes() -> None:
    assert PROVIDER.name == "runflow"
    assert PROVIDER.title == "Runflow"
    assert PROVIDER.key_env_var == "RUNFLOW_API_KEY"
    assert PROVIDER.base_url_env_var == "RUNFLOW_BASE_URL"
    assert PROVIDER.default_base_url == "https://api.runflow.io"
    assert PROVIDER.idempotent_creates is False
    assert PROVIDER.can_find_by_task_id is True


def test_shipped_tables() -> None:
    table = PROVIDER.price_table()
    assert table.provider == "runflow"
    assert table.read_on == "2026-08-21"
    assert "0.211" in table.notes and "0.219" in table.notes
    assert "failed runs" in table.notes and "token" in table.notes
    assert "runflow.io" in table.source
    caps = PROVIDER.capabilities()
    assert caps["max_images_per_run"] == 4
    assert caps["max_upload_bytes"] == 50 * 1024 * 1024
    assert caps["model_ids"]["gpt-image-1.5"]["edit"] == "openai/gpt-image-1.5/edit"


@pytest.mark.parametrize(
    ("model", "operation", "quality", "size", "price"),
    [
        ("gpt-image-2", "generate", "low", None, "0.009"),
        ("gpt-image-2", "generate", "medium", None, "0.034"),
        ("gpt-image-2", "edit", "high", None, "0.133"),
        ("gpt-image-1.5", "generate", "low", "1024x1536", "0.013"),
        ("gpt-image-1.5", "generate", "medium", "1536x1024", "0.050"),
        ("gpt-image-1.5", "generate", "medium", "1024x1536", "0.051"),
        ("gpt-image-1.5", "generate", "high", "1536x1024", "0.199"),
        ("gpt-image-1.5", "edit", "high", "1024x1536", "0.200"),
    ],
)
def test_price_table_leaves(
    model: str, operation: str, quality: str, size: str | None, price: str
) -> None:
    dims = (quality, size) if size else (quality,)
    assert PROVIDER.price_table().lookup(model, operation, *dims) == Decimal(price)


# -- common fields --------------------------------------------------------------------------


def test_default_quality_is_high_with_a_note() -> None:
    result = offer()
    assert result.eligible
    assert result.params["quality"] == "high"
    assert "Runflow's default quality is high" in result.notes
    assert result.per_image_usd == Decimal("0.133")


def test_explicit_quality_and_native_output_format() -> None:
    result = offer(quality="medium", output_format="webp")
    assert result.params["quality"] == "medium"
    assert result.params["output_format"] == "webp"
    assert result.convert_to is None
    assert not any("default quality" in note for note in result.notes)
    assert result.per_image_usd == Decimal("0.034")


def test_params_never_hold_prompt_or_inputs() -> None:
    result = edit(mask=b"mask-bytes")
    assert not {"prompt", "image_urls", "mask_url"} & set(result.params)


def test_n_is_split_into_runs_of_four() -> None:
    result = offer(n=10, quality="low")
    assert result.batches == (4, 4, 2)
    assert result.params["num_images"] == 4
    assert "Runflow allows at most 4 images per run: 3 runs" in result.notes
    assert result.total_usd == Decimal("0.090")
    assert result.tasks == 3


def test_small_n_is_one_run_without_a_note() -> None:
    result = offer(n=3)
    assert result.batches == (3,)
    assert not any("per run" in note for note in result.notes)


def test_capability_override_makes_ten_images_one_run() -> None:
    result = offer(caps={"max_images_per_run": 10}, n=10)
    assert result.batches == (10,)
    assert result.params["num_images"] == 10


def test_price_override_changes_the_quote() -> None:
    prices = PROVIDER.price_table().with_overrides({"gpt-image-2": {"generate": {"high": "0.2"}}})
    result = offer(prices=prices, n=2)
    assert result.per_image_usd == Decimal("0.2")
    assert result.total_usd == Decimal("0.4")
    # Other leaves stay as shipped.
    assert offer(prices=prices, quality="low").per_image_usd == Decimal("0.009")


def test_missing_price_is_ineligible() -> None:
    prices = PriceTable.from_mapping({"prices": {"gpt-image-1.5": {}}})
    result = offer(prices=prices)
    assert not result.eligible
    assert result.reason is not None and "no price" in result.reason


def test_too_many_input_images_is_ineligible() -> None:
    result = offer(caps={"max_input_images": 2}, images=[b"a", b"b", b"c"])
    assert not result.eligible
    assert result.reason is not None and "at most 2" in result.reason
    assert edit(caps={"max_input_images": 2}).eligible


def test_split_runs() -> None:
    assert split_runs(10, 4) == (4, 4, 2)
    assert split_runs(8, 4) == (4, 4)
    assert split_runs(1, 4) == (1,)
    assert split_runs(3, 0) == (1, 1, 1)


# -- gpt-image-2 sizes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "resolution", "expected"),
    [
        ("1:1", "1k", (1024, 1024)),
        ("16:9", "4k", (3840, 2160)),
        ("3:2", "2k", (2512, 1680)),
        ("9:16", "1k", (768, 1360)),
    ],
)
def test_ratio_geometry_becomes_width_and_height(
    ratio: str, resolution: str, expected: tuple[int, int]
) -> None:
    result = offer(aspect_ratio=ratio, resolution=resolution)
    assert result.eligible, result.reason
    width, height = expected
    assert result.params["image_size"] == {"width": width, "height": height}
    assert size_problem(width, height, SizeRules()) is None


def test_ratio_rounding_past_the_pixel_limit_is_shrunk_to_fit() -> None:
    # pixels_for gives 3328x2496 = 8,306,688 > 8,294,400.
    result = offer(aspect_ratio="4:3", resolution="4k")
    size = result.params["image_size"]
    assert size["width"] * size["height"] <= 8_294_400
    assert size["width"] % 16 == 0 and size["height"] % 16 == 0
    assert any("pixel limit" in note for note in result.notes)


def test_ratio_beyond_three_to_one_is_ineligible() -> None:
    result = offer(aspect_ratio="4:1")
    assert not result.eligible
    assert result.reason == "aspect ratio 4:1: Runflow's gpt-image-2 allows at most 3:1"


def test_pixels_are_rounded_to_sixteen_with_a_note() -> None:
    result = offer(size="1000x1000")
    assert result.params["image_size"] == {"width": 992, "height": 992}
    assert "1000x1000 rounded to 992x992 (Runflow needs multiples of 16)" in result.notes


def test_exact_pixels_need_no_note() -> None:
    result = offer(size="1536x1024")
    assert result.params["image_size"] == {"width": 1536, "height": 1024}
    assert not any("rounded" in note for note in result.notes)


@pytest.mark.parametrize(
    ("size", "rule"),
    [
        ("4000x1600", "the long edge may be at most 3840px"),
        ("3200x1024", "the aspect ratio may be at most 3:1"),
        ("640x640", "409,600 pixels is below the minimum of 655,360"),
        ("3840x3840", "14,745,600 pixels is above the maximum of 8,294,400"),
    ],
)
def test_pixels_breaking_a_size_rule_are_ineligible(size: str, rule: str) -> None:
    result = offer(size=size)
    assert not result.eligible
    assert result.reason is not None and result.reason.endswith(rule)
    assert result.reason.startswith("Runflow's gpt-image-2 size rule broken: ")


def test_size_rule_multiple_of_sixteen() -> None:
    assert size_problem(1000, 1024, SizeRules()) == "1000x1024: both sides must be multiples of 16"


def test_auto_generate_omits_image_size() -> None:
    result = offer(size="auto")
    assert "image_size" not in result.params
    assert any("landscape_4_3" in note for note in result.notes)


def test_auto_edit_sends_auto() -> None:
    result = edit(size="auto")
    assert result.operation == "edit"
    assert result.params["image_size"] == "auto"


def test_transparent_background_is_ineligible_on_gpt_image_2() -> None:
    result = offer(background="transparent")
    assert not result.eligible
    assert result.reason == "Runflow's gpt-image-2 lists no background input"


def test_gpt_image_2_never_sends_background() -> None:
    assert "background" not in offer(background="opaque").params
    assert "background" not in offer().params


def test_gpt_image_2_edit_prices_by_quality() -> None:
    result = edit(quality="medium", n=5)
    assert result.per_image_usd == Decimal("0.034")
    assert result.batches == (4, 1)
    assert result.total_usd == Decimal("0.170")


# -- gpt-image-1.5 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "size", "price"),
    [("1:1", "1024x1024", "0.034"), ("3:2", "1536x1024", "0.050"), ("2:3", "1024x1536", "0.051")],
)
def test_15_ratio_table(ratio: str, size: str, price: str) -> None:
    result = offer(model="gpt-image-1.5", aspect_ratio=ratio, quality="medium")
    assert result.params["image_size"] == size
    assert result.per_image_usd == Decimal(price)


@pytest.mark.parametrize("resolution", ["2k", "4k"])
def test_15_large_classes_are_ineligible(resolution: str) -> None:
    result = offer(model="gpt-image-1.5", aspect_ratio="1:1", resolution=resolution)
    assert not result.eligible
    assert result.reason == "gpt-image-1.5 makes 1k-class images only"


def test_15_other_ratio_is_ineligible_listing_sizes() -> None:
    result = offer(model="gpt-image-1.5", aspect_ratio="16:9")
    assert not result.eligible
    assert result.reason is not None
    assert "1024x1024, 1536x1024, 1024x1536, auto" in result.reason


def test_15_exact_pixels() -> None:
    result = offer(model="gpt-image-1.5", size="1024x1536", quality="low")
    assert result.params["image_size"] == "1024x1536"
    assert result.per_image_usd == Decimal("0.013")
    assert result.notes == ()


def test_15_near_pixels_snap_within_tolerance_with_a_note() -> None:
    result = offer(model="gpt-image-1.5", size="1530x1020", quality="high")
    assert result.params["image_size"] == "1536x1024"
    assert result.per_image_usd == Decimal("0.199")
    assert any("1530x1020 served as 1536x1024" in note for note in result.notes)


def test_15_pixels_off_ratio_are_ineligible() -> None:
    result = offer(model="gpt-image-1.5", size="1280x720")
    assert not result.eligible
    assert result.reason is not None
    assert "no size near 1280x720" in result.reason and "1024x1536" in result.reason


def test_15_large_pixels_are_ineligible() -> None:
    result = offer(model="gpt-image-1.5", size="2048x2048")
    assert not result.eligible
    assert result.reason is not None
    assert result.reason.startswith("gpt-image-1.5 makes 1k-class images only")


def test_15_tolerance_comes_from_capabilities() -> None:
    # 1500x1024 is 2.3% off 3:2: outside the shipped 2%, inside an override of 5%.
    assert not offer(model="gpt-image-1.5", size="1500x1024").eligible
    loose = offer(caps={"ratio_tolerance": 0.05}, model="gpt-image-1.5", size="1500x1024")
    assert loose.params["image_size"] == "1536x1024"


@pytest.mark.parametrize(("quality", "price"), [("low", "0.013"), ("high", "0.200")])
def test_15_auto_is_priced_at_the_dearest_size(quality: str, price: str) -> None:
    result = offer(model="gpt-image-1.5", size="auto", quality=quality)
    assert result.params["image_size"] == "auto"
    assert result.per_image_usd == Decimal(price)
    assert any("dearest" in note for note in result.notes)


@pytest.mark.parametrize("background", ["auto", "transparent", "opaque"])
def test_15_background_is_passed_through(background: str) -> None:
    result = offer(model="gpt-image-1.5", background=background)
    assert result.eligible
    assert result.params["background"] == background


def test_15_edit_uses_the_generate_table() -> None:
    result = edit(model="gpt-image-1.5", size="1536x1024", quality="medium", n=6)
    assert result.operation == "edit"
    assert result.per_image_usd == Decimal("0.050")
    assert result.batches == (4, 2)
    assert result.total_usd == Decimal("0.300")


def test_gpt_image_15_prompt_length_is_checked_before_any_call() -> None:
    from imagerouter_runflow import RunflowProvider

    from imagerouter import ImageRequest

    provider = RunflowProvider()
    kwargs = {"prices": provider.price_table(), "capabilities": provider.capabilities()}
    short = ImageRequest.build(prompt="x", model="gpt-image-1.5", quality="low")
    (offer,) = provider.offers(short, **kwargs)
    assert not offer.eligible and "2 to 32,000 characters" in (offer.reason or "")
    fine = ImageRequest.build(prompt="xy", model="gpt-image-1.5", quality="low")
    assert provider.offers(fine, **kwargs)[0].eligible
    assert provider.offers(ImageRequest.build(prompt="x"), **kwargs)[0].eligible  # gpt-image-2

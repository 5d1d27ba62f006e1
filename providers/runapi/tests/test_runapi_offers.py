"""RunAPIProvider.offers(): every mapping rule, every ineligible reason, and the prices."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from imagerouter_runapi import RunAPIProvider
from imagerouter_runapi.capabilities import shipped_capabilities

from imagerouter.offers import Offer
from imagerouter.pricing import PriceTable
from imagerouter.request import ImageRequest

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def offer(
    *,
    prices: PriceTable | None = None,
    capabilities: dict[str, Any] | None = None,
    **fields: Any,
) -> Offer:
    provider = RunAPIProvider()
    fields.setdefault("prompt", "a red fox in snow")
    request = ImageRequest.build(**fields)
    offers = provider.offers(
        request,
        prices=prices or provider.price_table(),
        capabilities=shipped_capabilities() if capabilities is None else capabilities,
    )
    assert len(offers) == 1
    return offers[0]


def eligible(**fields: Any) -> Offer:
    result = offer(**fields)
    assert result.eligible, result.reason
    return result


def ineligible(**fields: Any) -> str:
    result = offer(**fields)
    assert not result.eligible
    assert result.reason
    assert result.per_image_usd is None
    return result.reason


# -- shipped data ----------------------------------------------------------------------------


def test_price_table_is_the_per_resolution_table_with_its_provenance() -> None:
    table = RunAPIProvider().price_table()
    assert table.provider == "runapi"
    assert table.read_on == "2026-08-21"
    assert "https://runapi.ai/zh-CN/models/gpt-image-2" in table.source
    assert "0.240" in table.notes and "not charged" in table.notes
    for op in ("generate", "edit"):
        assert table.lookup("gpt-image-2", op, "1k") == Decimal("0.06")
        assert table.lookup("gpt-image-2", op, "2k") == Decimal("0.10")
        assert table.lookup("gpt-image-2", op, "4k") == Decimal("0.16")
        assert table.lookup("gpt-image-1.5", op, "medium") == Decimal("0.04")
        assert table.lookup("gpt-image-1.5", op, "high") == Decimal("0.04")


def test_capabilities_hold_the_contract_enums() -> None:
    caps = RunAPIProvider().capabilities()
    ratios = caps["models"]["gpt-image-2"]["aspect_ratios"]
    assert len(ratios) == 16 and "auto" in ratios and "21:9" in ratios and "9:21" in ratios
    assert caps["models"]["gpt-image-1.5"]["aspect_ratios"] == ["1:1", "2:3", "3:2"]
    assert caps["models"]["gpt-image-1.5"]["qualities"] == ["medium", "high"]
    assert caps["max_input_images"] == 16
    assert caps["ratio_tolerance"] == 0.02
    assert caps["max_upload_bytes"] == 20 * 1024 * 1024


# -- gpt-image-2 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aspect_ratio", "resolution", "price"),
    [("16:9", "1k", "0.06"), ("3:2", "2k", "0.10"), ("9:16", "4k", "0.16"), ("1:1", "2k", "0.10")],
)
def test_gpt_image_2_ratio_maps_to_aspect_ratio_and_output_resolution(
    aspect_ratio: str, resolution: str, price: str
) -> None:
    result = eligible(aspect_ratio=aspect_ratio, resolution=resolution)
    assert result.params == {
        "model": "gpt-image-2",
        "aspect_ratio": aspect_ratio,
        "output_resolution": resolution,
    }
    assert result.per_image_usd == Decimal(price)
    assert result.batches == (1,)
    assert result.notes == ()
    assert result.convert_to is None


def test_default_geometry_is_1_1_at_1k() -> None:
    result = eligible()
    assert result.params["aspect_ratio"] == "1:1"
    assert result.params["output_resolution"] == "1k"


def test_21_9_keeps_runapis_spelling_without_a_note() -> None:
    result = eligible(aspect_ratio="21:9")
    assert result.params["aspect_ratio"] == "21:9"
    assert result.notes == ()


def test_a_ratio_within_tolerance_goes_to_the_nearest_with_a_note() -> None:
    result = eligible(aspect_ratio="101:100")  # 1% off 1:1
    assert result.params["aspect_ratio"] == "1:1"
    assert any("nearest" in note for note in result.notes)


def test_a_ratio_far_from_every_allowed_one_is_ineligible_listing_them() -> None:
    reason = ineligible(aspect_ratio="7:5")  # 1.4: 4:3 is 5% off, 3:2 7%
    assert "7:5" in reason
    for ratio in ("1:1", "16:9", "21:9", "9:21"):
        assert ratio in reason


def test_pixels_map_to_nearest_ratio_and_resolution_class_with_a_note() -> None:
    result = eligible(size="1536x1024")
    assert result.params == {"model": "gpt-image-2", "aspect_ratio": "3:2",
                             "output_resolution": "1k"}
    assert any("chooses the exact pixels" in note for note in result.notes)

    wide = eligible(size="1792x1024")  # 1.75, 1.6% from 16:9
    assert wide.params["aspect_ratio"] == "16:9"
    assert wide.params["output_resolution"] == "2k"
    assert wide.per_image_usd == Decimal("0.10")

    large = eligible(size="3840x2160")
    assert large.params["output_resolution"] == "4k"
    assert large.per_image_usd == Decimal("0.16")


def test_pixels_with_no_ratio_within_tolerance_are_ineligible() -> None:
    reason = ineligible(size="1400x1000")
    assert "1400x1000" in reason and "16:9" in reason


def test_auto_is_sent_as_auto_at_1k() -> None:
    result = eligible(size="auto")
    assert result.params["aspect_ratio"] == "auto"
    assert result.params["output_resolution"] == "1k"
    assert result.per_image_usd == Decimal("0.06")


def test_auto_above_1k_is_ineligible_citing_the_sdk() -> None:
    reason = ineligible(aspect_ratio="auto", resolution="2k")
    assert "auto/unset only supports 1k" in reason
    assert "2k" in reason


def test_square_4k_is_ineligible() -> None:
    assert "1:1 cannot be 4k" in ineligible(aspect_ratio="1:1", resolution="4k")
    assert "1:1 cannot be 4k" in ineligible(size="4096x4096")


@pytest.mark.parametrize("quality", ["low", "medium", "high"])
def test_quality_on_gpt_image_2_is_ineligible(quality: str) -> None:
    reason = ineligible(quality=quality)
    assert reason == (
        "RunAPI's gpt-image-2 endpoints take no quality; leave quality unset, or list RunAPI "
        "in a tier without a quality"
    )


@pytest.mark.parametrize("model", ["gpt-image-2", "gpt-image-1.5"])
def test_transparent_background_is_ineligible(model: str) -> None:
    reason = ineligible(model=model, background="transparent")
    assert "background" in reason


@pytest.mark.parametrize("model", ["gpt-image-2", "gpt-image-1.5"])
def test_mask_is_ineligible(model: str) -> None:
    reason = ineligible(model=model, images=[PNG], mask=PNG)
    assert "mask" in reason


def test_too_many_input_images_is_ineligible() -> None:
    assert eligible(images=[PNG] * 16).operation == "edit"
    reason = ineligible(images=[PNG] * 17)
    assert "16" in reason and "17" in reason


def test_edit_uses_the_edit_price() -> None:
    table = PriceTable.from_mapping(
        {"provider": "runapi", "prices": {"gpt-image-2": {"generate": {"1k": "0.06"},
                                                           "edit": {"1k": "0.09"}}}}
    )
    result = eligible(prices=table, images=[PNG])
    assert result.operation == "edit"
    assert result.per_image_usd == Decimal("0.09")


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_other_formats_are_converted_locally(fmt: str) -> None:
    result = eligible(output_format=fmt)
    assert result.convert_to == fmt
    assert "output_format" not in result.params
    assert any("converted" in note for note in result.notes)


def test_n_images_make_n_tasks_and_the_total_multiplies() -> None:
    result = eligible(n=5, aspect_ratio="16:9", resolution="2k")
    assert result.batches == (1, 1, 1, 1, 1)
    assert result.tasks == 5
    assert result.per_image_usd == Decimal("0.10")
    assert result.total_usd == Decimal("0.50")


def test_price_overrides_apply_leaf_by_leaf() -> None:
    table = RunAPIProvider().price_table().with_overrides(
        {"gpt-image-2": {"generate": {"2k": "0.08"}}}
    )
    result = eligible(prices=table, n=3, resolution="2k")
    assert result.per_image_usd == Decimal("0.08")
    assert result.total_usd == Decimal("0.24")
    wide = eligible(prices=table, aspect_ratio="16:9", resolution="4k")
    assert wide.per_image_usd == Decimal("0.16")


def test_a_missing_price_is_ineligible() -> None:
    table = PriceTable.from_mapping(
        {"provider": "runapi", "prices": {"gpt-image-2": {"generate": {"1k": "0.06"}}}}
    )
    reason = ineligible(prices=table, resolution="2k")
    assert "no RunAPI price" in reason and "2k" in reason


def test_capability_overrides_are_honoured() -> None:
    caps: dict[str, Any] = {"max_input_images": 2}
    assert "at most 2" in ineligible(capabilities=caps, images=[PNG] * 3)

    caps = {"ratio_tolerance": 0.1}
    assert eligible(capabilities=caps, aspect_ratio="7:5").params["aspect_ratio"] == "4:3"

    caps = {"models": {"gpt-image-2": {"forbidden": []}}}
    result = eligible(capabilities=caps, aspect_ratio="1:1", resolution="4k")
    assert result.params["output_resolution"] == "4k"

    caps = {"models": {"gpt-image-2": {"auto_resolutions": ["1k", "2k"]}}}
    assert eligible(capabilities=caps, aspect_ratio="auto", resolution="2k").params == {
        "model": "gpt-image-2", "aspect_ratio": "auto", "output_resolution": "2k"
    }


def test_an_empty_capabilities_mapping_falls_back_to_the_shipped_table() -> None:
    assert eligible(capabilities={}, aspect_ratio="16:9").params["aspect_ratio"] == "16:9"


# -- gpt-image-1.5 ---------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", ["1:1", "2:3", "3:2"])
@pytest.mark.parametrize("quality", ["medium", "high"])
def test_gpt_image_15_maps_ratio_and_quality(ratio: str, quality: str) -> None:
    result = eligible(model="gpt-image-1.5", aspect_ratio=ratio, quality=quality)
    assert result.params == {"model": "gpt-image-1.5", "aspect_ratio": ratio,
                             "quality": quality}
    assert result.per_image_usd == Decimal("0.04")
    assert result.notes == ()


def test_gpt_image_15_pixels_use_the_nearest_ratio() -> None:
    result = eligible(model="gpt-image-1.5", size="1024x1536", quality="medium")
    assert result.params["aspect_ratio"] == "2:3"
    assert any("chooses the exact pixels" in note for note in result.notes)


def test_gpt_image_15_without_quality_sends_high_with_a_note() -> None:
    result = eligible(model="gpt-image-1.5")
    assert result.params["quality"] == "high"
    assert any("sent high" in note for note in result.notes)
    assert result.per_image_usd == Decimal("0.04")


def test_gpt_image_15_low_quality_is_ineligible() -> None:
    reason = ineligible(model="gpt-image-1.5", quality="low")
    assert "gpt-image-1.5 on RunAPI has no `low` quality" in reason


@pytest.mark.parametrize(
    "fields",
    [{"resolution": "2k"}, {"aspect_ratio": "3:2", "resolution": "4k"}, {"size": "2048x2048"}],
)
def test_gpt_image_15_above_1k_is_ineligible(fields: dict[str, Any]) -> None:
    reason = ineligible(model="gpt-image-1.5", **fields)
    assert "gpt-image-1.5 makes 1k-class images only" in reason


def test_gpt_image_15_auto_is_ineligible() -> None:
    reason = ineligible(model="gpt-image-1.5", size="auto")
    assert "aspect_ratio is required" in reason


def test_gpt_image_15_other_ratios_are_ineligible() -> None:
    reason = ineligible(model="gpt-image-1.5", aspect_ratio="16:9")
    assert "1:1, 2:3, 3:2" in reason


def test_gpt_image_15_n_and_format() -> None:
    result = eligible(model="gpt-image-1.5", n=4, quality="medium", output_format="webp")
    assert result.batches == (1, 1, 1, 1)
    assert result.total_usd == Decimal("0.16")
    assert result.convert_to == "webp"


def test_gpt_image_15_edit_price_and_params() -> None:
    result = eligible(model="gpt-image-1.5", images=[PNG, PNG], quality="high")
    assert result.operation == "edit"
    assert result.per_image_usd == Decimal("0.04")

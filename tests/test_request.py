"""Request validation: every bad field gets one clear error naming it and what is allowed."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from imagerouter import ImageRequest, RequestValidationError
from imagerouter.geometry import Ratio, nearest_ratio, pixels_for, resolution_class


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": "a", "model": "dall-e-3"}, "model", "gpt-image-2, gpt-image-1.5"),
        ({"prompt": "a", "quality": "ultra"}, "quality", "low, medium, high"),
        ({"prompt": "a", "size": "big"}, "size", "WxH"),
        ({"prompt": "a", "size": "99999x10"}, "size", "at most 16384"),
        ({"prompt": "a", "aspect_ratio": "wide"}, "aspect_ratio", "W:H"),
        ({"prompt": "a", "aspect_ratio": "10:1"}, "aspect_ratio", "4x"),
        ({"prompt": "a", "resolution": "8k"}, "resolution", "1k, 2k, 4k"),
        ({"prompt": "a", "n": 0}, "n", "1 to 10"),
        ({"prompt": "a", "n": 11}, "n", "1 to 10"),
        ({"prompt": "a", "output_format": "gif"}, "output_format", "png, jpeg, webp"),
        ({"prompt": "a", "background": "clear"}, "background", "auto, transparent, opaque"),
        ({"prompt": "a", "max_cost_usd": "-1"}, "max_cost_usd", "positive"),
        ({"prompt": "a", "providers": []}, "providers", "at least one"),
        ({"prompt": "a", "colour": "red"}, "colour", "not a request field"),
        ({"prompt": "a", "size": "1024x1024", "aspect_ratio": "1:1"}, "size", "not both"),
        ({"prompt": "a", "mask": b"\x89PNG"}, "mask", "at least one input image"),
        (
            {"prompt": "a", "background": "transparent", "output_format": "jpeg"},
            "background",
            "png or webp",
        ),
        ({"prompt": "a", "images": ["https://x.test/a.png"]}, "images", "allow_url_inputs"),
    ],
)
def test_each_bad_field_is_named(fields: dict[str, object], field: str, says: str) -> None:
    with pytest.raises(RequestValidationError) as caught:
        ImageRequest.build(**fields)
    assert caught.value.field == field
    assert says in str(caught.value)
    assert str(caught.value).startswith(f"{field}:")


def test_normalization() -> None:
    request = ImageRequest.build(
        prompt="  a cat  ", size="1536X1024", max_cost_usd=0.1, providers="runapi, runflow"
    )
    assert request.prompt == "a cat"
    assert request.size == "1536x1024"
    assert request.max_cost_usd == Decimal("0.1")
    assert request.providers == ("runapi", "runflow")
    geometry = request.geometry
    assert (geometry.kind, geometry.width, geometry.height, geometry.ratio) == (
        "pixels",
        1536,
        1024,
        Ratio(3, 2),
    )
    assert ImageRequest.build(prompt="a").geometry.describe() == "1:1 at 1k"
    assert ImageRequest.build(prompt="a", aspect_ratio="32:18").aspect_ratio == "16:9"
    assert ImageRequest.build(prompt="a", size="auto").geometry.kind == "auto"


def test_inputs_are_coerced(tmp_path: Path) -> None:
    request = ImageRequest.build(
        prompt="edit",
        images=[tmp_path / "a.png", b"\x89PNG", "https://example.test/x.png"],
        allow_url_inputs=True,
    )
    assert [item.kind for item in request.images] == ["path", "bytes", "url"]
    assert request.operation == "edit"
    assert "bytes" not in repr(request.images[1].data)[:0]
    assert request.public_dict()["images"][0].endswith("a.png")


def test_tier_overrides_merge_sizes() -> None:
    request = ImageRequest.build(prompt="a", size="1536x1024", quality="high")
    assert request.with_overrides(resolution="2k").geometry.describe() == "3:2 at 2k"
    assert request.with_overrides(size="1024x1024").size == "1024x1024"
    assert request.with_overrides(quality="low").quality == "low"
    with pytest.raises(RequestValidationError):
        request.with_overrides(quality="ultra")


def test_geometry_helpers() -> None:
    assert resolution_class(1536, 1024) == "1k"
    assert resolution_class(2048, 2048) == "2k"
    assert resolution_class(3840, 2160) == "4k"
    width, height = pixels_for(Ratio(16, 9), "4k")
    assert width % 16 == 0 and height % 16 == 0 and max(width, height) <= 3840
    assert pixels_for(Ratio(1, 1), "1k") == (1024, 1024)
    assert nearest_ratio(1000, 560, ["16:9", "4:3"]) == "16:9"
    assert nearest_ratio(1000, 700, ["16:9", "1:1"]) is None


def test_tier_overrides_keep_edit_inputs() -> None:
    request = ImageRequest.build(prompt="edit", images=[b"\x89PNG..."], mask=b"\x89PNG.")
    changed = request.with_overrides(quality="low", model="gpt-image-1.5")
    assert changed.images == request.images and changed.mask == request.mask
    assert changed.operation == "edit" and changed.quality == "low"

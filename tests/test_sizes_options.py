"""Issue 12, the pieces of exact sizes: the policy rules, OpenAI's size rule, the Pillow fit,
the request fields (`size_policy`, `moderation`, `input_fidelity`) and where they go, and the
CLI's `--size-policy`."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms

import imagerouter.download as download_module
from imagerouter.cli import cli
from imagerouter.errors import DownloadFailedError, RequestValidationError
from imagerouter.geometry import openai_size_problem, size_verdict
from imagerouter.request import ImageRequest
from imagerouter.resize import fit_to

from .conftest import MakeRouter

# -- the policy rules ------------------------------------------------------------------------


def test_exact_accepts_the_size_or_a_larger_same_ratio_one() -> None:
    assert size_verdict("exact", (1536, 1024), (1536, 1024)) == (True, (1536, 1024), None)
    eligible, resize_to, why = size_verdict("exact", (1536, 1024), (2512, 1680))
    assert (eligible, resize_to) == (True, (1536, 1024))
    assert why is not None and "downscaled to 1536x1024" in why
    # A backend that makes what it is asked for (delivered unknown) is fitted, a no-op.
    assert size_verdict("exact", (1000, 1000), None) == (True, (1000, 1000), None)


def test_exact_refuses_fewer_pixels_or_another_ratio() -> None:
    eligible, resize_to, why = size_verdict("exact", (1536, 1024), (1248, 832))
    assert (eligible, resize_to) == (False, None)
    assert why is not None and "fewer pixels" in why and "never upscales" in why
    eligible, _, why = size_verdict("exact", (1536, 864), (1536, 1024))
    assert not eligible and why is not None and "another aspect ratio" in why
    # Within 1% is the same ratio (sides rounded to multiples of 16): 4:3 at 1k.
    assert size_verdict("exact", (1024, 768), (1184, 880))[0]


def test_at_least_and_nearest() -> None:
    assert size_verdict("at_least", (1536, 1024), (2512, 1680))[:2] == (True, None)
    assert not size_verdict("at_least", (1536, 1024), (1248, 832))[0]
    assert not size_verdict("at_least", (1536, 864), (2048, 2048))[0]
    assert size_verdict("nearest", (1536, 1024), (1248, 832)) == (True, None, None)
    assert size_verdict("nearest", (1536, 864), (1024, 1024)) == (True, None, None)


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        ((1024, 1024), None),
        ((1536, 864), None),
        ((2560, 1440), None),
        ((3840, 2160), None),
        ((1024, 640), None),  # 655,360 pixels: the minimum
        ((1000, 1000), "divisible by 16"),
        ((3072, 1008), "3:1"),
        ((768, 768), "655,360"),
        ((3856, 1936), "3840"),
        ((2880, 2896), "8,294,400"),
    ],
)
def test_openais_size_rule(size: tuple[int, int], problem: str | None) -> None:
    found = openai_size_problem(*size)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and f"{size[0]}x{size[1]}" in found


# -- the Pillow fit ---------------------------------------------------------------------------


def test_fit_downscales_to_exactly_the_size() -> None:
    image = Image.new("RGB", (2512, 1680), (10, 200, 30))
    fitted = fit_to(image, (1536, 1024))
    assert fitted.size == (1536, 1024)
    assert fitted.getpixel((768, 512)) == (10, 200, 30)
    assert fit_to(image, (2512, 1680)) is image  # nothing to do


def test_fit_crops_the_centre_of_a_slightly_other_ratio() -> None:
    image = Image.new("RGB", (1184, 880), (0, 0, 0))
    # 1184x880 is 4:3 within 1%: covering 1024x768 crops about 5 source pixels each side.
    image.paste((255, 255, 255), (0, 0, 2, 880))  # a thin stripe at the left edge
    fitted = fit_to(image, (1024, 768))
    assert fitted.size == (1024, 768)
    left = fitted.getpixel((0, 384))
    assert isinstance(left, tuple) and max(left) < 40  # cropped away, not squeezed in


def test_fit_keeps_alpha_and_resamples_palette_images() -> None:
    rgba = Image.new("RGBA", (400, 400), (255, 0, 0, 128))
    fitted_rgba = fit_to(rgba, (200, 200))
    assert fitted_rgba.mode == "RGBA" and fitted_rgba.getpixel((100, 100)) == (255, 0, 0, 128)
    palette = Image.new("P", (400, 200))
    fitted = fit_to(palette, (200, 100))
    assert (fitted.size, fitted.mode) == ((200, 100), "RGB")


def test_fit_keeps_the_colour_profile() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.new("RGB", (300, 300))
    image.info["icc_profile"] = icc
    assert fit_to(image, (100, 100)).info["icc_profile"] == icc


# -- request fields ---------------------------------------------------------------------------


def test_request_fields_are_validated() -> None:
    request = ImageRequest.build(
        prompt="x", size="1536x1024", size_policy="at_least", moderation="low"
    )
    assert (request.size_policy, request.moderation) == ("at_least", "low")
    assert request.public_dict()["size_policy"] == "at_least"
    for field, value, allowed in [
        ("size_policy", "roughly", "exact, at_least, nearest"),
        ("moderation", "high", "auto, low"),
        ("input_fidelity", "max", "high, low"),
    ]:
        with pytest.raises(RequestValidationError) as caught:
            ImageRequest.build(prompt="x", **{field: value})
        assert caught.value.field == field and allowed in str(caught.value)


def test_input_fidelity_goes_to_runflows_gpt_image_15_edit(
    make_router: MakeRouter, input_png: Path
) -> None:
    router = make_router()
    offers = {
        o.provider: o
        for o in router.quote(
            images=[input_png], model="gpt-image-1.5", size="1024x1024", input_fidelity="high"
        )
    }
    assert offers["runflow"].params["input_fidelity"] == "high"
    assert "input_fidelity" not in offers["runapi"].params  # RunAPI takes none; still served
    # The Runflow emulator refuses unknown inputs, so this proves the field is one it takes.
    result = router.edit(
        "make it blue",
        [input_png],
        model="gpt-image-1.5",
        size="1024x1024",
        input_fidelity="high",
        moderation="low",
        providers=("runflow",),
    )
    assert (result.provider, result.images[0].width) == ("runflow", 1024)
    generate = router.quote(model="gpt-image-1.5", size="1024x1024", input_fidelity="high")
    assert all("input_fidelity" not in o.params for o in generate if o.provider != "openai")


def test_moderation_is_not_sent_where_no_backend_takes_it(make_router: MakeRouter) -> None:
    router = make_router()
    result = router.generate("a fox", size="1024x1024", moderation="low")
    assert "moderation" not in result.params
    assert result.provider in ("runapi", "runflow")


def test_resume_fits_the_images_it_collects(
    make_router: MakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    router = make_router()
    monkeypatch.setattr(download_module, "_durable_replace", no_space)
    monkeypatch.setattr(download_module, "_write_atomically", no_space)
    with pytest.raises(DownloadFailedError):
        router.generate("a red fox", size="1536x864")  # RunAPI: 2736x1536, paid, not saved
    monkeypatch.undo()
    [outcome] = router.resume()
    assert outcome.state == "collected"
    with Image.open(outcome.images[0]) as saved:
        assert saved.size == (1536, 864)


# -- the CLI ----------------------------------------------------------------------------------


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _runapi(out: str) -> dict[str, object]:
    offers = json.loads(out)["offers"]
    found: dict[str, object] = next(o for o in offers if o["provider"] == "runapi")
    return found


def test_cli_size_policy_on_quote() -> None:
    code, out = _invoke("quote", "a cat", "--size", "1536x1024", "--json")
    assert code == 0, out
    exact = _runapi(out)
    assert exact["delivered_size"] == "2512x1680" and exact["resize_to"] == "1536x1024"
    code, out = _invoke(
        "quote", "a cat", "--size", "1536x1024", "--size-policy", "nearest", "--json"
    )
    assert code == 0, out
    nearest = _runapi(out)
    assert (nearest["delivered_size"], nearest["resize_to"]) == ("1248x832", None)
    assert nearest["total_usd"] == "0.06"


def test_cli_generate_and_edit_save_the_exact_size(tmp_path: Path, input_png: Path) -> None:
    code, out = _invoke(
        "generate",
        "a lighthouse",
        "--emulate",
        "--size",
        "1536x864",
        "-o",
        str(tmp_path),
        "--json",
    )
    assert code == 0, out
    image = json.loads(out)["images"][0]
    with Image.open(image["path"]) as saved:
        assert saved.size == (1536, 864)
    code, out = _invoke(
        "edit",
        str(input_png),
        "--prompt",
        "bluer",
        "--emulate",
        "--size",
        "1536x1024",
        "--size-policy",
        "at_least",
        "-o",
        str(tmp_path),
        "--json",
    )
    assert code == 0, out
    width, height = (json.loads(out)["images"][0][k] for k in ("width", "height"))
    assert width >= 1536 and height >= 1024


def test_cli_bad_size_policy_exits_2() -> None:
    code, out = _invoke("quote", "a cat", "--size-policy", "roughly")
    assert code == 2 and "--size-policy" in out

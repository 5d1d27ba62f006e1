"""Issue 12, exact sizes: the requested WxH is a contract (size policy `exact`, the default),
on the library and on the gateway, from every backend, checked on the saved file with Pillow;
`at_least` and `nearest`; an impossible size is an ineligible offer with its reason."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from PIL import Image

from imagerouter.emulated import Emulators
from imagerouter.errors import NoEligibleOfferError
from imagerouter.offers import Offer
from imagerouter.plugins import Plugins

from .conftest import MakeRouter
from .test_gateway import ServeGateway, items, png_bytes, serve_gateway

__all__ = ["serve_gateway"]  # the fixture, imported for this module

# The sizes the issue saw come back wrong whenever RunAPI was the cheapest route.
ISSUE_SIZES = ["1536x1024", "1024x1536", "1536x864", "2560x1440"]
# The `openai` backend (providers/openai) on its emulator, beside RunAPI and Runflow.
WITH_OPENAI: dict[str, Any] = {"providers": {"openai": {"timeout": 5}}}


@pytest.fixture
def emulators(plugins: Plugins) -> Iterator[Emulators]:
    """Every installed backend's emulator (the shared fixture starts only the aggregators):
    make_router and serve_gateway here route to all of them."""
    with Emulators.start(plugins, latency="fixed:0.02", seed=7) as running:
        yield running


def _nothing_created(emulators: Emulators) -> bool:
    return not any(emulators.created().values())


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def _b64_size(b64: str | None) -> tuple[int, int]:
    assert b64 is not None
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.size


def _file_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# -- the library -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", ISSUE_SIZES)
def test_exact_is_the_default_and_runapi_is_downscaled(make_router: MakeRouter, size: str) -> None:
    router = make_router()
    result = router.generate("a lighthouse", size=size)
    assert result.provider == "runapi"  # still the cheapest, at the class that covers WxH
    assert result.params["output_resolution"] == "2k"
    assert [_file_size(image.path) for image in result.images] == [_size(size)]
    assert (result.images[0].width, result.images[0].height) == _size(size)


@pytest.mark.parametrize(
    ("provider", "model", "size"),
    [
        ("runflow", "gpt-image-2", "1536x864"),
        ("runflow", "gpt-image-2", "1000x1000"),  # not a multiple of 16: 1008x1008, downscaled
        ("runflow", "gpt-image-1.5", "768x512"),  # served at 1536x1024, downscaled
        ("runapi", "gpt-image-1.5", "1536x1024"),
        ("runapi", "gpt-image-2", "1024x768"),  # 4:3 at 1k is 1184x880: fitted to 1024x768
        ("openai", "gpt-image-2", "1536x864"),
        ("openai", "gpt-image-2", "1024x1536"),
    ],
)
def test_exact_from_every_backend(
    make_router: MakeRouter, provider: str, model: str, size: str
) -> None:
    router = make_router(WITH_OPENAI)
    result = router.generate("a harbour", size=size, model=model, providers=(provider,))
    assert result.provider == provider
    assert [_file_size(image.path) for image in result.images] == [_size(size)]


def test_exact_keeps_the_requested_format(make_router: MakeRouter) -> None:
    result = make_router().generate("a fox", size="1536x1024", output_format="webp")
    image = result.images[0]
    assert (image.format, image.path.suffix) == ("webp", ".webp")
    with Image.open(image.path) as opened:
        assert (opened.format, opened.size) == ("WEBP", (1536, 1024))


def test_at_least_keeps_the_backends_larger_image(make_router: MakeRouter) -> None:
    result = make_router().generate("a fox", size="1536x1024", size_policy="at_least")
    assert result.provider == "runapi"
    assert _file_size(result.images[0].path) == (2512, 1680)  # 3:2 at 2k, not resampled


def test_nearest_is_todays_behaviour(make_router: MakeRouter) -> None:
    result = make_router().generate("a fox", size="1536x1024", size_policy="nearest")
    assert (result.provider, result.cost_usd) == ("runapi", Decimal("0.06"))
    assert _file_size(result.images[0].path) == (1248, 832)


def test_the_config_default_is_routing_size_policy(make_router: MakeRouter) -> None:
    router = make_router({"routing": {"size_policy": "nearest"}})
    result = router.generate("a fox", size="1536x864")
    assert _file_size(result.images[0].path) == (1360, 768)
    exact = router.generate("a fox", size="1536x864", size_policy="exact")
    assert _file_size(exact.images[0].path) == (1536, 864)


def test_exact_prices_what_it_really_costs(make_router: MakeRouter) -> None:
    offers = {o.provider: o for o in make_router().quote(size="1536x1024")}
    runapi = offers["runapi"]
    assert runapi.eligible and str(runapi.total_usd) == "0.10"  # the 2k class it is sent at
    assert runapi.delivered_size == (2512, 1680)
    assert runapi.resize_to == (1536, 1024)
    assert any("downscaled to 1536x1024 after download" in note for note in runapi.notes)
    assert runapi.to_dict()["delivered_size"] == "2512x1680"
    nearest = {o.provider: o for o in make_router().quote(size="1536x1024", size_policy="nearest")}
    assert str(nearest["runapi"].total_usd) == "0.06"
    assert nearest["runapi"].resize_to is None


def test_an_impossible_size_is_ineligible_with_the_reason(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    router = make_router()
    # 1:1 cannot be 4k on RunAPI and 2k is 2048x2048: fewer pixels than asked.
    [offer] = _runapi(router.quote(size="2560x2560", providers=("runapi",)))
    assert not offer.eligible
    assert offer.reason is not None and "fewer pixels" in offer.reason
    assert "size_policy nearest" in offer.reason
    # gpt-image-1.5 has no 16:9 size anywhere.
    offers = router.quote(size="1536x864", model="gpt-image-1.5")
    assert offers and not any(o.eligible for o in offers)
    assert all(o.reason for o in offers)
    with pytest.raises(NoEligibleOfferError):
        router.generate("a fox", size="2560x2560", providers=("runapi",))
    assert _nothing_created(emulators)
    # Another aspect ratio is refused under exact, accepted under nearest.
    [odd] = _runapi(router.quote(size="1015x1000", providers=("runapi",), model="gpt-image-1.5"))
    assert not odd.eligible and odd.reason is not None and "aspect ratio" in odd.reason
    [kept] = _runapi(
        router.quote(
            size="1015x1000", providers=("runapi",), model="gpt-image-1.5", size_policy="nearest"
        )
    )
    assert kept.eligible


def test_a_tier_variants_own_size_is_exact_too(make_router: MakeRouter) -> None:
    tiers = {
        "tiers": {"wide": [{"provider": "runapi", "model": "gpt-image-2", "size": "1536x864"}]}
    }
    router = make_router(tiers)
    [offer] = router.quote(tier="wide")
    assert offer.eligible and offer.params["output_resolution"] == "2k"
    assert offer.resize_to == (1536, 864)
    result = router.generate("a fox", tier="wide")
    assert _file_size(result.images[0].path) == (1536, 864)


def test_a_bad_size_policy_is_one_clear_error(make_router: MakeRouter) -> None:
    with pytest.raises(ValueError, match="exact, at_least, nearest"):
        make_router().quote(size="1024x1024", size_policy="roughly")


def test_async_exact(make_router: MakeRouter) -> None:
    router = make_router()

    async def run() -> tuple[int, int]:
        result = await router.agenerate("a fox", size="2560x1440")
        return _file_size(result.images[0].path)

    assert asyncio.run(run()) == (2560, 1440)


# -- the gateway, driven by the official client ---------------------------------------------


@pytest.mark.parametrize("size", ISSUE_SIZES)
def test_gateway_exact_sizes_sync(serve_gateway: ServeGateway, size: str) -> None:
    served = serve_gateway()
    raw = served.client().images.with_raw_response.generate(
        model="gpt-image-2",
        prompt="a lighthouse",
        size=size,  # type: ignore[arg-type]
    )
    response = raw.parse()
    assert raw.headers["x-imagerouter-provider"] == "runapi"
    assert response.size == size
    assert [_b64_size(item.b64_json) for item in items(response)] == [_size(size)]


def test_gateway_exact_sizes_async(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()

    async def call() -> list[tuple[str | None, list[tuple[int, int]]]]:
        async with openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key=served.key) as client:
            out = []
            for size in ISSUE_SIZES:
                response = await client.images.generate(
                    model="gpt-image-2",
                    prompt="a lighthouse",
                    size=size,  # type: ignore[arg-type]
                )
                out.append((response.size, [_b64_size(i.b64_json) for i in items(response)]))
            return out

    answers = asyncio.run(call())
    assert answers == [(size, [_size(size)]) for size in ISSUE_SIZES]


@pytest.mark.parametrize(
    ("provider", "model", "size"),
    [
        ("runflow", "gpt-image-2", "1536x864"),
        ("runflow", "gpt-image-2", "2560x1440"),
        ("runflow", "gpt-image-1.5", "1024x1536"),
        ("runapi", "gpt-image-1.5", "1536x1024"),
        ("openai", "gpt-image-2", "2560x1440"),
        ("openai", "gpt-image-2", "1536x864"),
    ],
)
def test_gateway_exact_from_every_backend(
    serve_gateway: ServeGateway, provider: str, model: str, size: str
) -> None:
    served = serve_gateway(WITH_OPENAI)
    raw = served.client().images.with_raw_response.generate(
        model=model,
        prompt="a harbour",
        size=size,  # type: ignore[arg-type]
        extra_body={"providers": [provider]},
    )
    response = raw.parse()
    assert raw.headers["x-imagerouter-provider"] == provider
    assert response.size == size
    assert _b64_size(items(response)[0].b64_json) == _size(size)


def test_gateway_edit_exact_size(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    response = served.client().images.edit(
        image=("a.png", png_bytes(), "image/png"), prompt="make it blue", size="1536x1024"
    )
    assert response.size == "1536x1024"
    assert _b64_size(items(response)[0].b64_json) == (1536, 1024)


def test_gateway_size_policy_extension(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    response = served.client().images.generate(
        model="gpt-image-2",
        prompt="a fox",
        size="1536x1024",
        extra_body={"size_policy": "nearest"},
    )
    assert response.size == "1248x832"  # the true size, whatever was asked
    assert _b64_size(items(response)[0].b64_json) == (1248, 832)


def test_gateway_config_default_policy(serve_gateway: ServeGateway) -> None:
    served = serve_gateway({"routing": {"size_policy": "at_least"}})
    response = served.client().images.generate(model="gpt-image-2", prompt="a", size="1536x864")
    assert response.size == "2736x1536"


@pytest.mark.parametrize(
    ("size", "words"),
    [
        ("1000x1000", "divisible by 16"),
        ("3840x1024", "3:1"),
        ("512x512", "between 655,360 and 8,294,400"),
        ("4096x2048", "3840"),
        ("3840x3840", "between 655,360 and 8,294,400"),
    ],
)
def test_gateway_applies_openais_size_rules(
    serve_gateway: ServeGateway, emulators: Emulators, size: str, words: str
) -> None:
    served = serve_gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().images.generate(
            model="gpt-image-2",
            prompt="a fox",
            size=size,  # type: ignore[arg-type]
        )
    assert caught.value.status_code == 400
    assert caught.value.param == "size"
    assert caught.value.type == "invalid_request_error"
    assert caught.value.code == "invalid_value"
    assert words in caught.value.message and size in caught.value.message
    assert _nothing_created(emulators)


def test_gateway_bad_size_policy_is_a_400(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().images.generate(
            prompt="a fox", size="1024x1024", extra_body={"size_policy": "roughly"}
        )
    assert caught.value.param == "size_policy"


def test_gateway_impossible_size_names_the_reason(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().images.generate(
            model="gpt-image-2",
            prompt="a fox",
            size="2560x2560",  # type: ignore[arg-type]
            extra_body={"providers": ["runapi"]},  # 1:1 at 4k is refused; 2k is 2048x2048
        )
    assert caught.value.code == "no_eligible_backend"
    assert "fewer pixels" in caught.value.message
    assert _nothing_created(emulators)


def _runapi(offers: list[Offer]) -> list[Offer]:
    return [offer for offer in offers if offer.provider == "runapi"]


@pytest.mark.parametrize("size", ["1536x864", "2048x2048", "768x512"])
def test_gateway_holds_gpt_image_15_to_its_three_sizes(
    serve_gateway: ServeGateway, emulators: Emulators, size: str
) -> None:
    served = serve_gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().images.generate(
            model="gpt-image-1.5",
            prompt="a fox",
            size=size,  # type: ignore[arg-type]
        )
    assert (caught.value.param, caught.value.code) == ("size", "invalid_value")
    assert "1024x1024, 1536x1024, 1024x1536" in caught.value.message
    assert _nothing_created(emulators)

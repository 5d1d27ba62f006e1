"""Fuzzing the two front doors: whatever a user writes, the config loader answers with a
`Config` or one `ConfigError`, and `ImageRequest.build` with a request or one
`RequestValidationError`. Nothing else may escape (no KeyError, TypeError, InvalidOperation,
RecursionError...).

Inputs: random text as a YAML file, YAML-ish lines, random nested data keyed by the real
config vocabulary, and request fields with values of every type. A config that loads must also
survive the things every caller does next: `fingerprint()`, `public_dict()` and building a
Router from it (which may only add a `ConfigError`).
"""

from __future__ import annotations

import contextlib
import math
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from imagerouter import Router
from imagerouter.config import (
    BudgetSettings,
    Config,
    DownloadSettings,
    HealthSettings,
    LedgerSettings,
    OutputSettings,
    RoutingSettings,
    TierVariant,
    load_config,
)
from imagerouter.errors import ConfigError, RequestValidationError
from imagerouter.plugins import Plugins
from imagerouter.provider import ProviderSettings
from imagerouter.request import ImageInput, ImageRequest

# IMAGEROUTER_FUZZ_EXAMPLES=5000 for a longer campaign than CI's.
FUZZ = settings(
    max_examples=int(os.environ.get("IMAGEROUTER_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- the config ----------------------------------------------------------------------------

SECTIONS: dict[str, type[BaseModel]] = {
    "routing": RoutingSettings,
    "budget": BudgetSettings,
    "health": HealthSettings,
    "ledger": LedgerSettings,
    "output": OutputSettings,
    "downloads": DownloadSettings,
}
SECTION_KEYS = {name: tuple(model.model_fields) for name, model in SECTIONS.items()}
PROVIDER_KEYS = tuple(ProviderSettings.model_fields)
VARIANT_KEYS = tuple(TierVariant.model_fields)
WORDS = (
    "runapi",
    "runflow",
    "acme",
    "gpt-image-2",
    "gpt-image-1.5",
    "low",
    "medium",
    "high",
    "1k",
    "2k",
    "4k",
    "16:9",
    "1:1",
    "0:1",
    "1024x1024",
    "auto",
    "png",
    "jpeg",
    "transparent",
    "cheapest",
    "priority",
    "fastest",
    "reconcile",
    "failover",
    "hedge",
    "wait",
    "fail",
    "generate",
    "edit",
    "*",
    "draft",
    "standard",
    "${RUNAPI_API_KEY}",
    "${NOT_SET_ANYWHERE}",
    "a-${X}",
    "~/x",
    "",
    " ",
    "0.01",
    "-1",
    "1e309",
    "nan",
    ".inf",
    "source",
    "\x00",
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)


def keyed(keys: tuple[str, ...], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Dicts over real keys (and the odd junk one)."""
    return st.dictionaries(st.sampled_from((*keys, "junk")), values, max_size=5)


any_data = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
variant = keyed(VARIANT_KEYS, scalars | any_data)
provider = keyed(PROVIDER_KEYS, scalars | keyed(WORDS, any_data))
config_data = (
    st.fixed_dictionaries(
        {},
        optional={
            "providers": st.dictionaries(st.sampled_from(WORDS), provider | scalars, max_size=3)
            | any_data,
            "tiers": st.dictionaries(
                st.sampled_from(WORDS), st.lists(variant | scalars, max_size=3), max_size=3
            )
            | any_data,
            "default_tier": scalars,
            **{name: keyed(keys, scalars) | any_data for name, keys in SECTION_KEYS.items()},
        },
    )
    | any_data
)

YAML_LINES = (
    "routing:",
    "  max_attempts: 3",
    "  max_attempts: -1",
    "  strategy: [a, b]",
    "providers:",
    "  runapi:",
    "    timeout: .nan",
    "    api_key: ${NOPE}",
    "    prices: {gpt-image-2: x}",
    "tiers:",
    "  draft:",
    "    - {provider: runflow, model: gpt-image-2, quality: low}",
    "    - provider: acme",
    "budget: {daily_usd: -0.5}",
    "budget: {daily_usd: 1e999}",
    "health: {max_ejection_s: 1, base_ejection_s: 2}",
    "default_tier: premium",
    "&a [*a]",
    "a: &x 1",
    "b: *x",
    "c: *nope",
    "!!python/object/apply:os.system ['true']",
    "? [complex, key]",
    ": :",
    "- - -",
    "{",
    "}",
    "'",
    '"',
    "\t",
    "%YAML 1.2",
    "---",
    "...",
    "output: {dir: 2026-08-20}",
    "ledger: {path: !!binary aGk=}",
    "x: !custom 1",
    "\ufeff",
)


def check_config(config: Config) -> None:
    """A loaded config survives what every caller does next."""
    assert isinstance(config, Config)
    assert len(config.fingerprint()) == 16
    config.public_dict()


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins.load()


@FUZZ
@given(text=st.text(max_size=300) | st.lists(st.sampled_from(YAML_LINES)).map("\n".join))
@example(text="a: &a [*a, *a, *a]\nb: *a\n")
@example(text="routing:\n  max_attempts: 1e309\n")
def test_any_yaml_text_loads_or_raises_config_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "imagerouter.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert str(exc)
        return
    check_config(config)


@FUZZ
@given(data=config_data)
def test_any_yaml_document_loads_or_raises_config_error(data: Any, tmp_path: Path) -> None:
    """The same data through a real YAML file (so keys get lines) and as a dict."""
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        text = None  # Decimals and such have no YAML form: the dict path below still runs
    if text is not None:
        path = tmp_path / "imagerouter.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        with contextlib.suppress(ConfigError):
            check_config(load_config(path))


@FUZZ
@given(data=config_data.filter(lambda data: isinstance(data, dict)))
def test_any_dict_loads_or_raises_config_error(data: dict[str, Any], plugins: Plugins) -> None:
    try:
        config = load_config(data, known_providers=plugins.providers())
    except ConfigError as exc:
        assert str(exc)
        return
    check_config(config)
    with contextlib.suppress(ConfigError):  # e.g. a budget without the ledger
        Router(config, plugins=plugins, ledger=False)


# -- the request ---------------------------------------------------------------------------

FIELDS = tuple(ImageRequest.model_fields)
image_like = st.one_of(
    st.binary(max_size=8),
    st.text(max_size=10),
    st.sampled_from(["http://127.0.0.1/x.png", "https://example.invalid/a", "~/a.png"]),
    st.builds(Path, st.text(min_size=1, max_size=8)),
    st.builds(ImageInput.coerce, st.binary(max_size=4)),
)
request_value = st.one_of(
    scalars,
    st.sampled_from(
        [
            "1536x1024",
            "0x0",
            "16385x1",
            "4:1",
            "5:1",
            "1:0",
            "nan:1",
            "auto",
            "premium",
            "runapi,runflow",
            "0.001",
            "-1",
        ]
    ),
    st.lists(st.text(max_size=6), max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=2),
    image_like,
    st.lists(image_like, max_size=3),
)


def request_fields(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A usable prompt most of the time (so validation gets past it), then any fields."""
    prompt = st.sampled_from(["a red fox", "  x  "]) | st.text(max_size=20).filter(str.strip)
    # one_of flattens nested unions, so weight by hand: a junk prompt one time in ten.
    some_prompt = st.integers(0, 9).flatmap(lambda i: scalars if i == 0 else prompt)
    return st.fixed_dictionaries({"prompt": some_prompt}).flatmap(
        lambda base: st.dictionaries(st.sampled_from((*FIELDS, "junk")), values, max_size=4).map(
            lambda extra: {**extra, **base}
        )
    )


def images_are_coercible(fields: dict[str, Any]) -> bool:
    """Images and masks of a type ImageInput.coerce takes (others are tested below)."""
    ok = (bytes, str, Path, ImageInput)
    images = fields.get("images")
    if isinstance(images, list | tuple) and not all(isinstance(i, ok) for i in images):
        return False
    if images is not None and not isinstance(images, (list, tuple, *ok)):
        return False
    mask = fields.get("mask")
    return mask is None or isinstance(mask, ok)


@FUZZ
@given(fields=request_fields(request_value).filter(images_are_coercible))
@example(fields={"prompt": "x", "max_cost_usd": Decimal("sNaN")})
@example(fields={"prompt": "x", "max_cost_usd": math.inf})
@example(fields={"prompt": "x", "aspect_ratio": "99999999999999999999999:1"})
@example(fields={"prompt": "x", "size": "1x99999999999999999999"})
def test_any_request_builds_or_raises_request_validation_error(fields: dict[str, Any]) -> None:
    try:
        request = ImageRequest.build(**fields)
    except RequestValidationError as exc:
        assert isinstance(exc.field, str) and str(exc)
        return
    # A request that builds answers every question the router asks of it.
    assert request.prompt.strip()
    request.geometry.describe()
    request.public_dict()
    assert request.operation in ("generate", "edit")


@pytest.mark.parametrize(
    "fields",
    [
        {"images": 123},
        {"images": [123]},
        {"images": [None]},
        {"images": [b"png"], "mask": 1.5},
    ],
    ids=["images-int", "images-list-of-int", "images-list-of-none", "mask-float"],
)
def test_images_of_the_wrong_type_are_a_request_validation_error(fields: dict[str, Any]) -> None:
    with pytest.raises(RequestValidationError) as caught:
        ImageRequest.build(prompt="a fox", **fields)
    assert caught.value.field in ("images", "mask")

"""Config loading: every error kind with its exact `file:line: key: message`, env
interpolation, secrets, the search order, the shipped example configs and the defaults."""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import textwrap
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args, get_origin

import httpx
import pytest
from pydantic import BaseModel

from imagerouter.config import (
    BUILTIN_SOURCE,
    Config,
    TierVariant,
    default_config,
    find_config_path,
    load_config,
)
from imagerouter.errors import ConfigError, MissingApiKeyError
from imagerouter.offers import Offer
from imagerouter.pricing import PriceTable
from imagerouter.provider import Provider, ProviderClient, ProviderSettings
from imagerouter.request import ImageRequest

REPO = Path(__file__).resolve().parents[1]
KNOWN = {"runapi", "runflow"}
SECRET = "sk-live-THIS-MUST-NEVER-LEAK-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("RUNAPI_API_KEY", "RUNFLOW_API_KEY", "IMAGEROUTER_CONFIG", "OUT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield


def write(name: str, text: str, mode: int = 0o600) -> str:
    """Write a config into the (temporary) working directory; return the name as given."""
    path = Path(name)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    path.chmod(mode)
    return name


def error_of(source: str | Mapping[str, Any] | None, **kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source, **kw)
    return str(info.value)


# --- errors, each with file:line: key: message -----------------------------------------------


def test_bad_enum_in_a_tier_names_file_line_and_key() -> None:
    name = write("imagerouter.yaml", """
        # tiers for the team
        routing:
          strategy: cheapest

        tiers:
          draft:
            - {provider: runflow, model: gpt-image-2, quality: low}
            - {provider: runflow, model: gpt-image-2, quality: ultra}
        """)
    assert error_of(name) == (
        "imagerouter.yaml:8: tiers.draft[1].quality: 'ultra' is not one of low, medium, high"
    )


def test_bad_model_in_a_block_style_variant() -> None:
    name = write("c.yaml", """
        tiers:
          fast:
            - provider: runapi
              model: dall-e-3
        """)
    # The families the installed plugins declare (openai adds its own 2.5 / 2.6 families).
    assert error_of(name).startswith(
        "c.yaml:4: tiers.fast[0].model: 'dall-e-3' is not one of gpt-image-2, gpt-image-1.5")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "colour: blue\n",
            "c.yaml:1: colour: is not a known key; allowed: budget, cache, default_tier, "
            "downloads, gateway, health, ledger, mcp, output, prices, providers, routing, shared, "
            "tiers",
        ),
        (
            "routing:\n  strategy: cheapest\n  retries: 2\n",
            "c.yaml:3: routing.retries: is not a known key; allowed: max_attempts, "
            "on_deadline, on_unknown_submission, resume_on_start, size_policy, strategy",
        ),
        (
            "providers:\n  runapi:\n    timout: 5\n",
            "c.yaml:3: providers.runapi.timout: is not a known key; allowed: api_key, "
            "api_key_env, base_url, capabilities, enabled, poll_deadline, poll_interval, "
            "prices, timeout",
        ),
        (
            "tiers:\n  draft:\n    - provider: runflow\n      model: gpt-image-2\n"
            "      qualty: low\n",
            "c.yaml:5: tiers.draft[0].qualty: is not a known key; allowed: aspect_ratio, "
            "background, model, output_format, provider, quality, resolution, size",
        ),
        (
            "source: mine.yaml\n",
            "c.yaml:1: source: is not a known key; allowed: budget, cache, default_tier, "
            "downloads, gateway, health, ledger, mcp, output, prices, providers, routing, shared, "
            "tiers",
        ),
    ],
)
def test_unknown_keys_at_every_depth(text: str, expected: str) -> None:
    assert error_of(write("c.yaml", text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routing:\n  max_attempts: many\n",
         "c.yaml:2: routing.max_attempts: must be a whole number, not 'many'"),
        ("health:\n  free_checks: sometimes\n",
         "c.yaml:2: health.free_checks: must be true or false, not 'sometimes'"),
        ("budget:\n  daily_usd: lots\n",
         "c.yaml:2: budget.daily_usd: must be a number, not 'lots'"),
        ("routing: [cheapest]\n",
         "c.yaml:1: routing: must be a mapping (key: value), not a list"),
        ("tiers:\n  draft: runflow\n",
         "c.yaml:2: tiers.draft: must be a list, not 'runflow'"),
        ("providers:\n  runapi:\n    timeout: -5\n",
         "c.yaml:3: providers.runapi.timeout: must be a number greater than 0"),
        ("health:\n  jitter: 1.5\n",
         "c.yaml:2: health.jitter: must be a number at most 1"),
        ("routing:\n  max_attempts: 0\n",
         "c.yaml:2: routing.max_attempts: must be a number at least 1"),
        ("tiers:\n  draft:\n    - {model: gpt-image-2}\n",
         "c.yaml:3: tiers.draft[0].provider: is required"),
    ],
)
def test_wrong_types_and_ranges(text: str, expected: str) -> None:
    assert error_of(write("c.yaml", text)) == expected


def test_the_first_problem_in_file_order_is_reported() -> None:
    name = write("c.yaml", "health:\n  jitter: 7\nrouting:\n  strategy: random\n")
    assert error_of(name).startswith("c.yaml:2: health.jitter:")


def test_yaml_syntax_error_has_its_line() -> None:
    name = write("c.yaml", "routing:\n  strategy: cheapest\n max_attempts: 2\n")
    message = error_of(name)
    assert message.startswith("c.yaml:3: invalid YAML: ")


def test_duplicate_key_names_both_lines() -> None:
    name = write("c.yaml", """
        routing:
          strategy: cheapest
          max_attempts: 2
          strategy: priority
        """)
    assert error_of(name) == "c.yaml:4: routing.strategy: duplicate key (first at line 2)"


def test_unsafe_yaml_tags_are_refused() -> None:
    name = write("c.yaml", "output:\n  dir: !!python/object/apply:os.system [echo hi]\n")
    assert error_of(name) == (
        "c.yaml:2: output.dir: the YAML tag !!python/object/apply:os.system is not allowed"
    )


def test_recursive_alias_is_refused() -> None:
    name = write("c.yaml", "tiers: &loop\n  draft: *loop\n")
    assert error_of(name) == "c.yaml:1: tiers.draft: a recursive alias is not allowed"


def test_several_documents_are_refused() -> None:
    assert error_of(write("c.yaml", "routing: {}\n---\nbudget: {}\n")) == (
        "c.yaml:2: invalid YAML: expected a single document in the stream, "
        "but found another document"
    )


def test_top_level_must_be_a_mapping() -> None:
    assert error_of(write("c.yaml", "- routing\n- tiers\n")) == (
        "c.yaml:1: the config must be a mapping of sections (like `routing:`), not a list"
    )


def test_empty_file_is_the_defaults() -> None:
    config = load_config(write("c.yaml", "# nothing here yet\n"))
    assert config.source == "c.yaml"
    assert config.public_dict() == default_config().public_dict()


def test_missing_file_is_an_error_not_a_fallback() -> None:
    assert error_of("nope.yaml") == "nope.yaml: the config file does not exist"


def test_unknown_provider_via_check_providers_has_its_line() -> None:
    name = write("c.yaml", """
        providers:
          runapi: {timeout: 30}
          runfow: {timeout: 30}
        """)
    config = load_config(name)
    assert config.locate("providers.runfow") == 3
    with pytest.raises(ConfigError) as info:
        config.check_providers(KNOWN)
    assert str(info.value) == (
        "c.yaml:3: providers.runfow: 'runfow' is not a known provider; known: runapi, runflow"
    )
    assert info.value.line == 3
    assert info.value.key == "providers.runfow"


def test_unknown_provider_in_a_tier_variant() -> None:
    name = write("c.yaml", """
        tiers:
          draft:
            - {provider: runflow, model: gpt-image-2, quality: low}
            - provider: openai
              model: gpt-image-1.5
        """)
    assert error_of(name, known_providers=KNOWN) == (
        "c.yaml:4: tiers.draft[1].provider: 'openai' is not a known provider; "
        "known: runapi, runflow"
    )


def test_default_tier_must_be_a_tier() -> None:
    name = write("c.yaml", "tiers:\n  fast:\n    - {provider: runapi, model: gpt-image-2}\n"
                 "default_tier: draft\n")
    assert error_of(name) == "c.yaml:4: default_tier: 'draft' is not one of the tiers: fast"
    # A Config built by hand is caught by check_providers.
    with pytest.raises(ConfigError, match="default_tier: 'x' is not one of the tiers"):
        Config(default_tier="x").check_providers(KNOWN)


def test_tier_variants_follow_the_request_rules() -> None:
    name = write("c.yaml", """
        tiers:
          cutout:
            - provider: runflow
              model: gpt-image-2
              background: transparent
              output_format: jpeg
        """)
    assert error_of(name) == (
        "c.yaml:5: tiers.cutout[0].background: 'transparent' needs output_format png or webp "
        "(jpeg has no alpha)"
    )
    bad_size = write("d.yaml", "tiers:\n  x:\n    - {provider: runapi, model: gpt-image-2, "
                     "size: huge}\n")
    assert error_of(bad_size).startswith("d.yaml:3: tiers.x[0].size: 'huge' is not allowed")


def test_empty_tier_is_an_error() -> None:
    assert error_of(write("c.yaml", "tiers:\n  draft: []\n")) == (
        "c.yaml:2: tiers.draft: a tier must list at least one variant"
    )


def test_price_overrides_are_checked_where_they_are_written() -> None:
    name = write("c.yaml", """
        providers:
          runapi:
            prices:
              gpt-image-2:
                generate: {1k: cheap}
        """)
    assert error_of(name) == (
        "c.yaml:5: providers.runapi.prices.gpt-image-2.generate.1k: 'cheap' is not an amount "
        "in USD"
    )


def test_price_overrides_merge_into_a_table() -> None:
    config = load_config({"providers": {"runapi": {"prices": {"gpt-image-2": {
        "generate": {"1k": 0.05}}}}}})
    shipped = PriceTable(provider="runapi", prices={"gpt-image-2": {"generate": {
        "1k": Decimal("0.06"), "2k": Decimal("0.10")}}})
    table = shipped.with_overrides(config.provider_settings("runapi").prices)
    assert table.lookup("gpt-image-2", "generate", "1k") == Decimal("0.05")
    assert table.lookup("gpt-image-2", "generate", "2k") == Decimal("0.10")


def test_ejection_limits_must_be_ordered() -> None:
    name = write("c.yaml", "health:\n  base_ejection_s: 60\n  max_ejection_s: 30\n")
    assert error_of(name) == (
        "c.yaml:3: health.max_ejection_s: must be at least base_ejection_s (60)"
    )


def test_dict_errors_say_dict_and_no_line() -> None:
    message = error_of({"tiers": {"draft": [{"provider": "x", "model": "gpt-image-2",
                                             "quality": "ultra"}]}})
    assert message == "<dict>: tiers.draft[0].quality: 'ultra' is not one of low, medium, high"


# --- environment variables -------------------------------------------------------------------


class FakeProvider(Provider):
    name = "runapi"
    title = "Fake"
    key_env_var = "RUNAPI_API_KEY"
    base_url_env_var = "RUNAPI_BASE_URL"
    default_base_url = "http://127.0.0.1:9"

    def price_table(self) -> PriceTable:
        return PriceTable(provider="runapi", prices={})

    def offers(
        self, request: ImageRequest, *, prices: PriceTable, capabilities: Mapping[str, Any]
    ) -> list[Offer]:
        return []

    def client(self, settings: ProviderSettings, http: httpx.AsyncClient) -> ProviderClient:
        raise NotImplementedError


def test_env_reference_is_read_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_RUNAPI_KEY", SECRET)
    monkeypatch.setenv("OUT_DIR", "/srv/images")
    config = load_config(write("c.yaml", """
        providers:
          runapi:
            api_key: ${TEAM_RUNAPI_KEY}
        output:
          dir: ${OUT_DIR}
        """))
    settings = config.provider_settings("runapi")
    assert settings.resolve_api_key(FakeProvider()).get_secret_value() == SECRET
    assert settings.api_key_env == "TEAM_RUNAPI_KEY"
    assert config.output.dir == Path("/srv/images")


def test_unset_api_key_stays_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write("c.yaml", "providers:\n  runapi:\n    api_key: ${TEAM_KEY}\n"))
    settings = config.provider_settings("runapi")
    assert settings.api_key is None
    assert settings.api_key_env == "TEAM_KEY"
    with pytest.raises(MissingApiKeyError) as info:
        settings.resolve_api_key(FakeProvider())
    assert info.value.env_var == "TEAM_KEY"
    assert "TEAM_KEY" in str(info.value)
    # Set later: found at use time, without reloading.
    monkeypatch.setenv("TEAM_KEY", SECRET)
    assert settings.resolve_api_key(FakeProvider()).get_secret_value() == SECRET


def test_unset_variable_elsewhere_is_an_error() -> None:
    name = write("c.yaml", "ledger:\n  enabled: true\n  path: ${LEDGER_FILE_UNSET}\n")
    assert error_of(name) == (
        "c.yaml:3: ledger.path: the environment variable LEDGER_FILE_UNSET is not set"
    )


def test_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUT_DIR", "")
    assert error_of({"output": {"dir": "${OUT_DIR}"}}) == (
        "<dict>: output.dir: the environment variable OUT_DIR is not set"
    )


def test_partial_references_are_left_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUT_DIR", "/srv")
    config = load_config({"output": {"dir": "${OUT_DIR}/images"},
                          "providers": {"runapi": {"base_url": "https://x-${OUT_DIR}"}}})
    assert config.output.dir == Path("${OUT_DIR}/images")
    assert config.provider_settings("runapi").base_url == "https://x-${OUT_DIR}"


def test_numbers_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTEMPTS", "5")
    assert load_config({"routing": {"max_attempts": "${ATTEMPTS}"}}).routing.max_attempts == 5


# --- secrets ---------------------------------------------------------------------------------


def everything_printable(config: Config) -> str:
    return "\n".join([
        repr(config), str(config), json.dumps(config.public_dict()), config.fingerprint(),
        repr(config.provider_settings("runapi")), str(config.providers),
    ])


def test_secrets_never_appear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNAPI_API_KEY", SECRET)
    from_env = load_config(write("c.yaml", "providers:\n  runapi:\n    api_key: "
                                 "${RUNAPI_API_KEY}\n"))
    literal = load_config({"providers": {"runapi": {"api_key": SECRET}}})
    for config in (from_env, literal, default_config()):
        assert config.provider_settings("runapi").api_key is not None
        text = everything_printable(config)
        assert SECRET not in text
        assert SECRET[:12] not in text
    assert literal.public_dict()["providers"]["runapi"]["api_key"] == "**********"


def test_wrong_type_api_key_is_not_echoed() -> None:
    message = error_of({"providers": {"runapi": {"api_key": 987654321987}}})
    assert message == "<dict>: providers.runapi.api_key: must be text"


def test_fingerprint_is_stable_and_follows_the_key() -> None:
    data = {"providers": {"runapi": {"api_key": SECRET, "timeout": 30}}}
    first, again = load_config(data), load_config(data)
    assert first.fingerprint() == again.fingerprint()
    assert len(first.fingerprint()) == 16
    other_key = load_config({"providers": {"runapi": {"api_key": SECRET + "x", "timeout": 30}}})
    assert other_key.fingerprint() != first.fingerprint()
    other_timeout = load_config({"providers": {"runapi": {"api_key": SECRET, "timeout": 31}}})
    assert other_timeout.fingerprint() != first.fingerprint()
    # The same settings from a file have the same fingerprint (the source is not a setting).
    from_file = load_config(write("c.yaml", f"providers:\n  runapi:\n    api_key: {SECRET}\n"
                                  "    timeout: 30\n"))
    assert from_file.fingerprint() == first.fingerprint()


def test_literal_key_in_a_readable_file_warns_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = f"providers:\n  runapi:\n    api_key: {SECRET}\n"
    with caplog.at_level(logging.WARNING, logger="imagerouter.config"):
        load_config(write("private.yaml", text, mode=0o600))
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="imagerouter.config"):
        load_config(write("shared.yaml", text, mode=0o644))
    assert len(caplog.records) == 1
    assert "shared.yaml:3: providers.runapi.api_key" in caplog.text
    assert SECRET not in caplog.text


# --- search order ----------------------------------------------------------------------------


def test_search_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert find_config_path() is None
    assert load_config().source == BUILTIN_SOURCE

    write("imagerouter.yaml", "routing:\n  strategy: priority\n")
    assert find_config_path() == Path("imagerouter.yaml")
    assert load_config().routing.strategy == "priority"

    env_file = tmp_path / "from-env.yaml"
    env_file.write_text("routing:\n  strategy: fastest\n", encoding="utf-8")
    monkeypatch.setenv("IMAGEROUTER_CONFIG", str(env_file))
    assert find_config_path() == env_file
    assert load_config().routing.strategy == "fastest"
    assert load_config().source == str(env_file)

    write("explicit.yaml", "routing:\n  max_attempts: 7\n")
    assert find_config_path("explicit.yaml") == Path("explicit.yaml")
    config = load_config("explicit.yaml")
    assert (config.routing.max_attempts, config.routing.strategy) == (7, "cheapest")


def test_config_env_var_pointing_nowhere_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEROUTER_CONFIG", "gone.yaml")
    assert error_of(None) == "gone.yaml: the config file does not exist"


# --- sections, locate, defaults --------------------------------------------------------------


def test_missing_sections_come_from_the_defaults_and_tiers_replace_whole() -> None:
    small = load_config({"default_tier": "standard", "budget": {"daily_usd": 5}})
    assert set(small.tiers) == {"draft", "standard", "premium"}
    assert small.budget.daily_usd == Decimal("5")
    own = load_config({"tiers": {"fast": [{"provider": "runapi", "model": "gpt-image-2"}]}})
    assert set(own.tiers) == {"fast"}


def test_budget_floats_become_exact_decimals() -> None:
    config = load_config(write("c.yaml", "budget:\n  daily_usd: 0.1\n  monthly_usd: '2.50'\n"))
    assert config.budget.daily_usd == Decimal("0.1")
    assert config.budget.monthly_usd == Decimal("2.50")


def test_built_in_tiers_pass_check_providers_with_one_plugin() -> None:
    # The defaults name both shipped providers; with only one installed that is not an error.
    default_config().check_providers({"runapi"})
    load_config({"routing": {"strategy": "priority"}}, known_providers={"runflow"})


def test_locate_and_yaml_keys_stay_text() -> None:
    config = load_config(write("c.yaml", """
        providers:
          runapi:
            prices:
              gpt-image-2: {generate: {1k: "0.05", 2k: "0.09"}}
        tiers:
          no:
            - {provider: runapi, model: gpt-image-2}
        """))
    assert config.locate("tiers.no[0].provider") == 7
    assert config.locate("tiers.no") == 6
    assert config.locate("providers.runapi.prices.gpt-image-2.generate.1k") == 4
    assert config.locate("budget") is None
    assert "no" in config.tiers  # YAML 1.1 would have made this key False
    assert set(config.provider_settings("runapi").prices["gpt-image-2"]["generate"]) == {
        "1k", "2k"}


def test_anchors_and_merge_keys_work() -> None:
    config = load_config(write("c.yaml", """
        tiers:
          draft:
            - &base {provider: runflow, model: gpt-image-2, quality: low}
          premium:
            - <<: *base
              quality: high
        """))
    assert config.tiers["premium"][0] == TierVariant(
        provider="runflow", model="gpt-image-2", quality="high")


def test_provider_settings_for_an_unconfigured_provider_are_defaults() -> None:
    config = load_config({"providers": {"runapi": {"enabled": False}}})
    assert config.provider_settings("runapi").enabled is False
    assert config.provider_settings("elsewhere") == ProviderSettings()


def test_defaults_ship_as_package_data() -> None:
    assert importlib.resources.files("imagerouter.config").joinpath("defaults.yaml").is_file()
    config = default_config()
    assert config.source == BUILTIN_SOURCE
    assert config.routing.strategy == "cheapest"
    assert [config.provider_settings(p).api_key_env for p in ("runapi", "runflow")] == [
        "RUNAPI_API_KEY", "RUNFLOW_API_KEY"]
    assert set(config.tiers) == {"draft", "standard", "premium"}
    for name, variants in config.tiers.items():
        # Failover needs somewhere to go: every tier has a variant on each provider.
        assert {v.provider for v in variants} == {*KNOWN, "openai"}, name
    # Only providers and tiers are written out; every other default is the models' own.
    assert config.public_dict() | {"providers": {}, "tiers": {}} == (
        Config().public_dict() | {"providers": {}, "tiers": {}})


def test_default_keys_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNFLOW_API_KEY", SECRET)
    key = default_config().provider_settings("runflow").api_key
    assert key is not None and key.get_secret_value() == SECRET
    assert default_config().provider_settings("runapi").api_key is None


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_example_configs_load(path: Path) -> None:
    config = load_config(path, known_providers=KNOWN)
    assert config.source == str(path)
    assert config.tiers


def test_shipped_example_configs_exist() -> None:
    names = {p.name for p in (REPO / "config").glob("*.yaml")}
    assert {"imagerouter.example.yaml", "minimal.yaml", "runflow-only.yaml"} <= names


def all_key_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every settable key, with `<name>` for free-form mapping keys and `[]` for list items."""
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        path = f"{prefix}.{name}" if prefix else name
        yield path
        annotation = info.annotation
        if get_origin(annotation) is dict:
            value = get_args(annotation)[1]
            if get_origin(value) is list:
                yield from all_key_paths(get_args(value)[0], f"{path}.<name>[]")
            elif isinstance(value, type) and issubclass(value, BaseModel):
                yield from all_key_paths(value, f"{path}.<name>")
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from all_key_paths(annotation, path)


def test_full_example_sets_every_key() -> None:
    config = load_config(REPO / "config" / "imagerouter.example.yaml")
    lines = config._lines
    missing = []
    for key_path in all_key_paths(Config):
        pattern = key_path.replace(".<name>[]", ".*[*]").replace(".<name>", ".*")
        parts = pattern.split(".")
        if not any(_matches(parts, located.split(".")) for located in lines):
            missing.append(key_path)
    assert not missing


def _matches(pattern: list[str], path: list[str]) -> bool:
    if len(pattern) != len(path):
        return False
    for want, got in zip(pattern, path, strict=True):
        if want == "*":
            continue
        if want == "*[*]":
            if "[" not in got:
                return False
            continue
        if want != got:
            return False
    return True


def test_reference_documents_every_key() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    undocumented = [
        key_path for key_path in all_key_paths(Config)
        if f"`{key_path}`" not in text
    ]
    assert not undocumented


def test_config_is_frozen() -> None:
    config = default_config()
    with pytest.raises(ValueError, match="frozen"):
        config.default_tier = "draft"  # type: ignore[misc]


def test_expanduser_on_paths() -> None:
    config = load_config({"output": {"dir": "~/pictures"}, "ledger": {"path": "~/l.db"}})
    assert config.output.dir == Path(os.path.expanduser("~/pictures"))
    assert config.ledger.path == Path(os.path.expanduser("~/l.db"))


@pytest.mark.parametrize("doc", ["configuration.md", "tiers.md"])
def test_yaml_examples_in_the_docs_load(doc: str) -> None:
    text = (REPO / "docs" / doc).read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    assert blocks
    for block in blocks:
        load_config(write("doc.yaml", block), known_providers=KNOWN)


def test_secret_values_are_never_echoed_in_errors() -> None:
    from imagerouter.config import load_config
    from imagerouter.errors import ConfigError

    for data in (
        {"gateway": {"api_keys": [{"nested": "sk-live-SECRET123"}]}},
        {"gateway": {"runflow_callback_secret": ["whsec_SECRET123"]}},
        {"providers": {"runapi": {"api_key": ["sk-live-SECRET123"]}}},
    ):
        try:
            load_config(data)
        except ConfigError as exc:
            assert "SECRET123" not in str(exc), str(exc)
        else:
            raise AssertionError(f"{data} should not load")

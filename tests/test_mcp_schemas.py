"""The MCP tools' schemas and argument checks agree with the CLI and the request model."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import click
import pytest
from click.testing import CliRunner

from imagerouter.cli.main import cli
from imagerouter.cli.request_options import request_options
from imagerouter.mcp_server import ToolArgumentError, client_slug, parse_arguments, tool_schemas
from imagerouter.mcp_server.schemas import NON_ARGUMENT_FIELDS
from imagerouter.plugins import Plugins
from imagerouter.request import ImageRequest

KNOWN = tuple(Plugins.load().providers())  # what the CLI checks --provider against


def _cli_options() -> dict[str, click.Option]:
    @click.command()
    @request_options
    def probe(**_: Any) -> None:
        """Only carries the options."""

    return {p.name: p for p in probe.params if isinstance(p, click.Option) and p.name}


def _parse(tool: str, arguments: dict[str, Any], **kwargs: Any) -> Any:
    options: dict[str, Any] = {"allow_url_inputs": False, "cap_usd": None, **kwargs}
    return parse_arguments(tool, arguments, known_providers=KNOWN, **options)


def test_every_request_field_and_cli_option_is_an_argument_with_the_same_choices() -> None:
    schemas = tool_schemas()
    fields = set(ImageRequest.model_fields) - NON_ARGUMENT_FIELDS
    for tool in ("quote", "generate", "edit"):
        properties = schemas[tool]["properties"]
        assert fields <= set(properties), tool
        for name, option in _cli_options().items():
            assert name in properties, (tool, name)
            assert properties[name].get("description") == option.help
            if isinstance(option.type, click.Choice):
                assert properties[name]["enum"] == list(option.type.choices), (tool, name)
    assert {"images", "mask"} <= set(schemas["edit"]["properties"])
    assert "images" not in schemas["generate"]["properties"]
    assert schemas["generate"]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("arguments", "argv"),
    [
        ({"prompt": "x", "size": "huge"}, ["--size", "huge"]),
        ({"prompt": "x", "aspect_ratio": "9:1"}, ["--aspect-ratio", "9:1"]),
        ({"prompt": "x", "n": 0}, ["-n", "0"]),
        ({"prompt": "x", "max_cost_usd": "-1"}, ["--max-cost", "-1"]),
        ({"prompt": "x", "providers": ["nope"]}, ["--provider", "nope"]),
        ({"prompt": "  "}, []),
    ],
)
def test_a_bad_argument_reads_as_the_cli_error_line(
    arguments: dict[str, Any], argv: list[str]
) -> None:
    with pytest.raises(ToolArgumentError) as caught:
        _parse("generate", arguments)
    prompt = arguments["prompt"]
    result = CliRunner().invoke(cli, ["generate", prompt, *argv])
    assert result.exit_code == 2
    assert str(caught.value) == result.stderr.strip().splitlines()[-1].removeprefix("error: ")


def test_urls_are_inputs_only_when_the_server_allows_them() -> None:
    edit = {"prompt": "x", "images": ["https://example.com/a.png"]}
    with pytest.raises(ToolArgumentError, match="is a URL"):
        _parse("edit", edit)
    assert _parse("edit", edit, allow_url_inputs=True).request.images[0].kind == "url"
    with pytest.raises(ToolArgumentError, match="set by the server's config"):
        _parse("edit", {**edit, "allow_url_inputs": True})
    with pytest.raises(ToolArgumentError, match="use the edit tool"):
        _parse("generate", edit)


def test_the_per_call_cap_lowers_a_call_s_own_cap_never_raises_it() -> None:
    cap = Decimal("0.5")
    assert _parse("generate", {"prompt": "x"}, cap_usd=cap).request.max_cost_usd == cap
    lower = _parse("generate", {"prompt": "x", "max_cost_usd": 0.2}, cap_usd=cap)
    assert lower.request.max_cost_usd == Decimal("0.2")
    higher = _parse("generate", {"prompt": "x", "max_cost_usd": "9"}, cap_usd=cap)
    assert higher.request.max_cost_usd == cap


def test_quote_takes_edit_images_and_needs_no_prompt() -> None:
    call = _parse("quote", {"edit_images": 2})
    assert call.request.operation == "edit" and len(call.request.images) == 2
    with pytest.raises(ToolArgumentError, match="edit_images"):
        _parse("quote", {"edit_images": 0})


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Claude Code", "Claude-Code"),
        ("cursor-vscode", "cursor-vscode"),
        ("", "unknown"),
        (None, "unknown"),
        ("a/b:c", "a-b-c"),
        ("*", "unknown"),
    ],
)
def test_client_names_become_scope_names(name: str | None, slug: str) -> None:
    assert client_slug(name) == slug

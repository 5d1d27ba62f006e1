"""OpenAI's own meanings of an error answer, on top of the kit's generic mapping, and the
kit pieces the plugin stands on (retry-after-ms, provider_hook, snap_size, deep_merge)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from imagerouter_openai import OpenAIProvider, register_providers
from imagerouter_openai.client import OpenAIClient

from imagerouter.errors import (
    InsufficientCreditsError,
    InvalidRequestError,
    ProviderUnavailableError,
    RateLimitedError,
)
from imagerouter.provider import Provider
from imagerouter.provider_kit import deep_merge, retry_after_of, snap_size

if TYPE_CHECKING:
    from conftest import Served

MakeClient = Callable[..., OpenAIClient]


def answer(status: int, error: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": error}, headers=headers)


def test_out_of_quota_429_is_out_of_credit_not_a_rate_limit(make_client: MakeClient) -> None:
    response = answer(429, {"message": "quota", "type": "x", "code": "insufficient_quota"})
    error = make_client().error_for(response, call="create", client_ref="task-1")
    assert isinstance(error, InsufficientCreditsError)
    assert error.accepted == "no" and error.client_ref == "task-1"


def test_plain_429_reads_retry_after_ms(make_client: MakeClient) -> None:
    response = answer(429, {"message": "slow down"}, **{"retry-after-ms": "1500"})
    error = make_client().error_for(response, call="create")
    assert isinstance(error, RateLimitedError) and error.retry_after == 1.5


def test_content_refusal_names_the_prompt(make_client: MakeClient) -> None:
    response = answer(400, {"message": "no", "type": "image_generation_user_error", "code": None})
    error = make_client().error_for(response, call="create")
    assert isinstance(error, InvalidRequestError)
    assert error.code == "image_generation_user_error" and "prompt" in error.fields
    assert "safety system" in str(error)


def test_a_bad_param_is_not_a_refusal(make_client: MakeClient) -> None:
    response = answer(400, {"message": "bad size", "param": "size", "code": "invalid_value"})
    error = make_client().error_for(response, call="create")
    assert isinstance(error, InvalidRequestError)
    assert error.fields == {"size": ["bad size"]} and "safety" not in str(error)


def test_503_made_nothing_but_500_may_have(make_client: MakeClient) -> None:
    client = make_client()
    busy = client.error_for(answer(503, {"message": "busy"}), call="create")
    broken = client.error_for(answer(500, {"message": "oops"}), call="create")
    assert isinstance(busy, ProviderUnavailableError) and busy.accepted == "no"
    assert isinstance(broken, ProviderUnavailableError) and broken.accepted == "unknown"


def test_the_key_is_redacted_from_an_echoed_body(served: Served, make_client: MakeClient) -> None:
    key = served.emulator.options.api_key
    error = make_client().error_for(answer(401, {"message": f"bad {key}"}), call="create")
    assert key not in str(error) and key not in (error.body or "")


def test_retry_after_of_prefers_ms_and_falls_back() -> None:
    assert retry_after_of(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert retry_after_of(httpx.Headers({"retry-after-ms": "nan?", "retry-after": "9"})) == 9.0
    assert retry_after_of(httpx.Headers()) is None


def test_provider_hook_registers_one_provider() -> None:
    seen: list[Provider] = []
    register_providers(seen.append)
    assert [type(p) for p in seen] == [OpenAIProvider]


def test_snap_size_notes_only_a_change() -> None:
    notes: list[str] = []
    assert snap_size(1024, 1024, 16, notes, title="X", verb="sent as") == (1024, 1024)
    assert notes == []
    snapped = snap_size(1000, 1000, 16, notes, title="X", verb="sent as")
    assert notes == [f"1000x1000 sent as {snapped[0]}x{snapped[1]} (X needs multiples of 16)"]


def test_deep_merge_never_aliases_an_input() -> None:
    override = {"a": {"b": 1}}
    merged = deep_merge({}, override)
    merged["a"]["b"] = 2
    assert override == {"a": {"b": 1}}

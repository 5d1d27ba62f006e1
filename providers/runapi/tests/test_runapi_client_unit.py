"""RunAPIClient on httpx.MockTransport: what it sends, how it reads every documented answer
shape, and how every failure maps onto imagerouter.errors."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from imagerouter_runapi import RunAPIClient, RunAPIProvider
from pydantic import SecretStr

from imagerouter.errors import (
    AuthenticationError,
    ConnectionFailedError,
    InsufficientCreditsError,
    InvalidRequestError,
    MalformedResponseError,
    MissingApiKeyError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    SubmissionUnknownError,
)
from imagerouter.offers import Offer
from imagerouter.provider import LoadedImage, ProviderSettings, TaskSpec, TaskState

KEY = "sk-unit-7c4e2a9f81"
SSL_CONTEXT = ssl.create_default_context()
BASE = "https://runapi.test"
Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, key: str = KEY) -> RunAPIClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), verify=SSL_CONTEXT)
    settings = ProviderSettings(api_key=SecretStr(key), base_url=BASE, timeout=3)
    return RunAPIProvider().client(settings, http)


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None,
           text: str | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def offer_and_task(spec: Callable[..., TaskSpec], **kw: Any) -> tuple[Offer, TaskSpec]:
    task = spec(**kw)
    offer = Offer(provider="runapi", model=task.model, operation=task.operation,
                  eligible=True, params=dict(task.params), batches=(1,))
    return offer, task


# -- what the client sends -------------------------------------------------------------------


async def test_submit_posts_the_compacted_body_with_every_header(
    spec: Callable[..., TaskSpec],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "t-1", "status": "processing"},
                              headers={"x-request-id": "req-9"})

    offer, task = offer_and_task(
        spec, model="gpt-image-2", operation="edit",
        params={"model": "gpt-image-2", "aspect_ratio": "16:9", "output_resolution": "2k",
                "blank": " ", "unset": None},
        input_urls=("https://files.example/a.png", "https://files.example/b.png"),
        callback_url="https://hooks.example/runapi",
    )
    submission = await make_client(handler).submit(offer, task)

    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/api/v1/gpt_image_2/edit_image"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["idempotency-key"] == task.idempotency_key
    assert request.headers["x-client-request-id"] == task.task_id
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"].startswith("imagerouter-runapi/")
    assert json.loads(request.content) == {
        "model": "gpt-image-2",
        "aspect_ratio": "16:9",
        "output_resolution": "2k",
        "prompt": task.prompt,
        "source_image_urls": ["https://files.example/a.png", "https://files.example/b.png"],
        "callback_url": "https://hooks.example/runapi",
    }
    assert submission.task_id == "t-1"
    assert submission.poll_ref == "gpt_image_2/edit_image/t-1"
    assert submission.state is TaskState.RUNNING
    assert submission.request_id == "req-9"
    assert submission.replayed is False


async def test_generate_on_gpt_image_15_has_no_source_urls(
    spec: Callable[..., TaskSpec],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "t-2", "status": "pending"})

    offer, task = offer_and_task(spec, model="gpt-image-1.5")
    submission = await make_client(handler).submit(offer, task)
    assert str(seen[0].url) == f"{BASE}/api/v1/gpt_image/text_to_image"
    body = json.loads(seen[0].content)
    assert "source_image_urls" not in body and "callback_url" not in body
    assert body["quality"] == "high"
    assert submission.state is TaskState.QUEUED
    assert submission.poll_ref == "gpt_image/text_to_image/t-2"


@pytest.mark.parametrize(
    ("body", "billed"),
    [
        ({"usage": {"cost": 0.06}}, Decimal("0.06")),
        ({"billing": {"settlement": {"charged_amount_cents": 10}}}, Decimal("0.10")),
        ({"billing": {"settlement": {"amount_micro_cents": 16_000_000}}}, Decimal("0.16")),
        ({"billing": {"reservation": {"amount_cents": 6}, "settlement": None}}, None),
        ({}, None),
    ],
)
async def test_submit_reads_replay_and_billing(
    spec: Callable[..., TaskSpec], body: dict[str, Any], billed: Decimal | None
) -> None:
    data = {"id": "t-3", "status": "completed", "task_replayed": True, **body}
    offer, task = offer_and_task(spec)
    submission = await make_client(answer(202, data)).submit(offer, task)
    assert submission.replayed is True
    assert submission.billed_usd == billed
    assert submission.state is TaskState.SUCCEEDED


async def test_submit_falls_back_to_the_task_id_header(spec: Callable[..., TaskSpec]) -> None:
    offer, task = offer_and_task(spec)
    handler = answer(200, {"status": "pending"}, headers={"X-RunAPI-Task-Id": "hdr-1"})
    submission = await make_client(handler).submit(offer, task)
    assert submission.task_id == "hdr-1"
    assert submission.poll_ref.endswith("/hdr-1")


async def test_submit_without_any_id_is_malformed_and_maybe_accepted(
    spec: Callable[..., TaskSpec],
) -> None:
    offer, task = offer_and_task(spec)
    with pytest.raises(MalformedResponseError) as info:
        await make_client(answer(200, {"status": "pending"})).submit(offer, task)
    assert info.value.accepted == "unknown"
    assert info.value.client_ref == task.task_id


async def test_submit_with_unparseable_json_is_malformed_and_maybe_accepted(
    spec: Callable[..., TaskSpec],
) -> None:
    offer, task = offer_and_task(spec)
    with pytest.raises(MalformedResponseError) as info:
        await make_client(answer(200, text='{"id": "t-', headers={})).submit(offer, task)
    assert info.value.accepted == "unknown"


# -- polling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("completed", TaskState.SUCCEEDED),
        ("COMPLETE", TaskState.SUCCEEDED),
        ("succeeded", TaskState.SUCCEEDED),
        ("Success", TaskState.SUCCEEDED),
        ("finished", TaskState.SUCCEEDED),
        ("failed", TaskState.FAILED),
        ("error", TaskState.FAILED),
        ("generate_failed", TaskState.FAILED),
        ("create_task_failed", TaskState.FAILED),
        ("timeout", TaskState.FAILED),
        ("canceled", TaskState.CANCELED),
        ("CANCELLED", TaskState.CANCELED),
        ("pending", TaskState.QUEUED),
        ("queued", TaskState.QUEUED),
        ("processing", TaskState.RUNNING),
        ("rendering", TaskState.RUNNING),
        (None, TaskState.RUNNING),
    ],
)
async def test_get_normalizes_every_status_alias(status: str | None, state: TaskState) -> None:
    seen: list[httpx.Request] = []
    body: dict[str, Any] = {"id": "t-1", "status": status,
                            "images": [{"url": "https://file.runapi.ai/x.png"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=body)

    result = await make_client(handler).get("gpt_image_2/text_to_image/t-1")
    assert str(seen[0].url) == f"{BASE}/api/v1/gpt_image_2/text_to_image/t-1"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert result.state is state
    if state is TaskState.FAILED:
        assert result.error  # a failed task always says something


async def test_get_reads_image_objects_and_plain_strings() -> None:
    body = {"status": "completed",
            "images": [{"url": "https://f/1.png"}, "https://f/2.png", {"nope": 1}]}
    result = await make_client(answer(200, body)).get("gpt_image/edit_image/t")
    assert result.image_urls == ("https://f/1.png", "https://f/2.png")
    assert result.terminal


@pytest.mark.parametrize(
    ("error", "message", "code"),
    [
        ("content policy", "content policy", None),
        ({"code": "moderation", "message": "blocked"}, "blocked", "moderation"),
        (None, "RunAPI reported the task failed without saying why", None),
    ],
)
async def test_get_reads_the_failure(error: Any, message: str, code: str | None) -> None:
    result = await make_client(answer(200, {"status": "failed", "error": error})).get("s/a/t")
    assert result.state is TaskState.FAILED
    assert result.error == message
    assert result.error_code == code


@pytest.mark.parametrize(
    ("extra", "billed"),
    [
        ({"usage": {"cost": 0.1}}, Decimal("0.1")),
        ({"billing": {"settlement": {"charged_amount_cents": 6}}}, Decimal("0.06")),
        ({}, None),
    ],
)
async def test_get_reads_the_billed_cost(extra: dict[str, Any], billed: Decimal | None) -> None:
    body = {"status": "completed", "images": ["https://f/1.png"], **extra}
    result = await make_client(answer(200, body)).get("s/a/t")
    assert result.billed_usd == billed


async def test_completed_without_images_is_malformed_and_accepted() -> None:
    with pytest.raises(MalformedResponseError) as info:
        await make_client(answer(200, {"status": "completed"})).get("s/a/t-7")
    assert info.value.accepted == "yes"
    assert info.value.task_id == "t-7"


async def test_get_with_a_non_json_body_is_malformed_and_accepted() -> None:
    with pytest.raises(MalformedResponseError) as info:
        await make_client(answer(200, text="<html>")).get("s/a/t")
    assert info.value.accepted == "yes"


# -- error mapping ---------------------------------------------------------------------------

CREATE_CASES = [
    (400, {"error": "Bad input"}, InvalidRequestError, "no"),
    (422, {"error": "Validation failed", "errors": {"prompt": ["is required"]}},
     InvalidRequestError, "no"),
    (413, {"error": "Payload too large"}, InvalidRequestError, "no"),
    (401, {"error": "Unauthorized"}, AuthenticationError, "no"),
    (403, {"error": {"code": "forbidden", "message": "no scope"}}, AuthenticationError, "no"),
    (402, {"error": "Insufficient credits"}, InsufficientCreditsError, "no"),
    (404, {"error": "Not found"}, InvalidRequestError, "no"),
    (409, {"error": "Conflict"}, InvalidRequestError, "no"),
    (429, {"error": "Too many requests"}, RateLimitedError, "no"),
    (503, {"error": "No active channel available"}, ProviderUnavailableError, "no"),
    (503, {"error": "Service unavailable"}, ProviderUnavailableError, "unknown"),
    (500, {"error": "Internal server error"}, ProviderUnavailableError, "unknown"),
    (502, None, ProviderUnavailableError, "unknown"),
]


@pytest.mark.parametrize(("status", "body", "error", "accepted"), CREATE_CASES)
async def test_create_errors_map_to_the_tree(
    spec: Callable[..., TaskSpec], status: int, body: Any, error: type[ProviderError],
    accepted: str,
) -> None:
    offer, task = offer_and_task(spec)
    handler = answer(status, body, headers={"x-request-id": "req-e"})
    with pytest.raises(error) as info:
        await make_client(handler).submit(offer, task)
    exc = info.value
    assert type(exc) is error
    assert exc.accepted == accepted
    assert exc.status_code == status
    assert exc.request_id == "req-e"
    assert exc.provider == "runapi"
    assert exc.client_ref == task.task_id


@pytest.mark.parametrize(("status", "body", "error", "accepted"), CREATE_CASES)
async def test_poll_errors_always_say_the_job_was_accepted(
    status: int, body: Any, error: type[ProviderError], accepted: str
) -> None:
    with pytest.raises(error) as info:
        await make_client(answer(status, body)).get("gpt_image_2/text_to_image/t-5")
    assert info.value.accepted == "yes"
    assert info.value.task_id == "t-5"


async def test_validation_fields_and_codes(spec: Callable[..., TaskSpec]) -> None:
    offer, task = offer_and_task(spec)
    body = {"error": "Validation failed",
            "errors": {"prompt": ["is required"], "aspect_ratio": "is not included"}}
    with pytest.raises(InvalidRequestError) as info:
        await make_client(answer(422, body)).submit(offer, task)
    assert info.value.fields == {"prompt": ["is required"], "aspect_ratio": ["is not included"]}
    assert "prompt is required" in str(info.value)

    with pytest.raises(InvalidRequestError) as info:
        await make_client(answer(404, {"error": "x"})).submit(offer, task)
    assert info.value.code == "not_found"

    with pytest.raises(InvalidRequestError) as info:
        await make_client(answer(409, {"error": "reused"})).submit(offer, task)
    assert "Idempotency-Key" in str(info.value)


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        ({"error": "Bad input"}, "Bad input", None),
        ({"error": {"code": "source_task_not_ready", "message": "wait"}}, "wait",
         "source_task_not_ready"),
        ({"error": "Callback API key not found", "code": "not_found"},
         "Callback API key not found", "not_found"),
        ({"message": "from message"}, "from message", None),
        ({"detail": "from detail"}, "from detail", None),
        ({"errorMessage": "from errorMessage"}, "from errorMessage", None),
        ({"msg": "from msg"}, "from msg", None),
        ("just a string", "just a string", None),
    ],
)
async def test_every_error_body_shape_is_read(
    spec: Callable[..., TaskSpec], body: Any, message: str, code: str | None
) -> None:
    offer, task = offer_and_task(spec)
    with pytest.raises(InvalidRequestError) as info:
        await make_client(answer(400, body)).submit(offer, task)
    assert message in info.value.message
    assert info.value.code == (code or "validation")


async def test_html_error_pages_are_ignored(spec: Callable[..., TaskSpec]) -> None:
    offer, task = offer_and_task(spec)
    html = "<!DOCTYPE html><html><title>502 Bad Gateway</title><body>cloudflare</body></html>"
    with pytest.raises(ProviderUnavailableError) as info:
        await make_client(answer(502, text=html)).submit(offer, task)
    assert "cloudflare" not in info.value.message
    assert info.value.accepted == "unknown"


async def test_plain_text_bodies_become_the_message(spec: Callable[..., TaskSpec]) -> None:
    offer, task = offer_and_task(spec)
    with pytest.raises(InvalidRequestError) as info:
        await make_client(answer(400, text="prompt too long")).submit(offer, task)
    assert "prompt too long" in info.value.message


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("0.5", 0.5), (None, None)])
async def test_retry_after_in_seconds(
    spec: Callable[..., TaskSpec], header: str | None, expected: float | None
) -> None:
    offer, task = offer_and_task(spec)
    headers = {"Retry-After": header} if header else {}
    with pytest.raises(RateLimitedError) as info:
        await make_client(answer(429, {"error": "slow down"}, headers=headers)).submit(offer, task)
    assert info.value.retry_after == expected


async def test_retry_after_as_an_http_date(spec: Callable[..., TaskSpec]) -> None:
    offer, task = offer_and_task(spec)
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    with pytest.raises(RateLimitedError) as info:
        await make_client(answer(429, {}, headers={"Retry-After": when})).submit(offer, task)
    assert info.value.retry_after is not None
    assert 100 < info.value.retry_after <= 120


# -- transport failures ----------------------------------------------------------------------


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


NEVER_SENT = [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow connect")]
MAYBE_SENT = [
    httpx.ReadTimeout("read timeout"),
    httpx.WriteTimeout("write timeout"),
    httpx.ReadError("reset"),
    httpx.WriteError("broken pipe"),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
]


@pytest.mark.parametrize("exc", NEVER_SENT, ids=lambda e: type(e).__name__)
async def test_create_that_never_connected_is_not_accepted(
    spec: Callable[..., TaskSpec], exc: Exception
) -> None:
    offer, task = offer_and_task(spec)
    with pytest.raises(ConnectionFailedError) as info:
        await make_client(raising(exc)).submit(offer, task)
    assert info.value.accepted == "no"


@pytest.mark.parametrize("exc", MAYBE_SENT, ids=lambda e: type(e).__name__)
async def test_create_without_an_answer_is_unknown(
    spec: Callable[..., TaskSpec], exc: Exception
) -> None:
    offer, task = offer_and_task(spec)
    with pytest.raises(SubmissionUnknownError) as info:
        await make_client(raising(exc)).submit(offer, task)
    assert info.value.accepted == "unknown"
    assert info.value.client_ref == task.task_id


@pytest.mark.parametrize("exc", NEVER_SENT + MAYBE_SENT, ids=lambda e: type(e).__name__)
async def test_poll_transport_failures_are_accepted(exc: Exception) -> None:
    with pytest.raises((ConnectionFailedError, ProviderUnavailableError)) as info:
        await make_client(raising(exc)).get("gpt_image_2/text_to_image/t-1")
    assert info.value.accepted == "yes"


# -- uploads and the balance -----------------------------------------------------------------


async def test_upload_posts_base64_and_returns_the_url() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"file_name": "in.png", "url": "https://file/in.png",
                                         "size_bytes": 4, "mime_type": "image/png"})

    image = LoadedImage(name="in", data=b"\x89PNG", mime_type="image/png", filename="in.png",
                        width=1, height=1)
    url = await make_client(handler).upload(image)
    assert url == "https://file/in.png"
    assert str(seen[0].url) == f"{BASE}/api/v1/files"
    assert json.loads(seen[0].content) == {
        "source": {"type": "base64", "data": base64.b64encode(b"\x89PNG").decode()},
        "file_name": "in.png",
    }


async def test_upload_failures() -> None:
    image = LoadedImage(name="in", data=b"x", mime_type="image/png", filename="in.png",
                        width=1, height=1)
    with pytest.raises(MalformedResponseError) as info:
        await make_client(answer(200, {"file_name": "in.png"})).upload(image)
    assert info.value.accepted == "no"
    with pytest.raises(InvalidRequestError):
        await make_client(answer(413, {"error": "File too large"})).upload(image)
    with pytest.raises(ProviderUnavailableError) as unavailable:
        await make_client(raising(httpx.ReadTimeout("slow"))).upload(image)
    assert unavailable.value.accepted == "no"


async def test_free_check_reads_the_balance() -> None:
    body = {"balance_cents": 1234, "paid_balance_cents": 1234, "bonus_balance_cents": 0,
            "spent_cents_today": 0, "spent_cents_total": 0}
    check = await make_client(answer(200, body)).free_check()
    assert check.ok and check.balance_usd == Decimal("12.34")

    bad = await make_client(answer(401, {"error": "Unauthorized"})).free_check()
    assert not bad.ok and "Unauthorized" in bad.detail


# -- keys ------------------------------------------------------------------------------------


async def test_the_key_never_appears_in_errors(spec: Callable[..., TaskSpec]) -> None:
    offer, task = offer_and_task(spec)

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": f"bad key {request.headers['authorization']}"})

    def echo_in_exception(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError(f"lost {request.headers['authorization']}")

    errors: list[ProviderError] = []
    for handler in (echo, echo_in_exception):
        with pytest.raises(ProviderError) as info:
            await make_client(handler).submit(offer, task)
        errors.append(info.value)
    with pytest.raises(ProviderError) as polled:
        await make_client(echo).get("s/a/t")
    errors.append(polled.value)
    for error in errors:
        for text in (str(error), repr(error), error.body or "", error.message):
            assert KEY not in text
        assert error.__cause__ is None
    assert "[redacted]" in (errors[0].body or "")


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNAPI_API_KEY", raising=False)
    with pytest.raises(MissingApiKeyError) as info:
        RunAPIProvider().client(ProviderSettings(), httpx.AsyncClient(verify=SSL_CONTEXT))
    assert "RUNAPI_API_KEY" in str(info.value)


def test_key_and_base_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNAPI_API_KEY", KEY)
    monkeypatch.setenv("RUNAPI_BASE_URL", "http://127.0.0.1:9/")
    client = RunAPIProvider().client(ProviderSettings(), httpx.AsyncClient(verify=SSL_CONTEXT))
    assert client.base_url == "http://127.0.0.1:9"
    assert KEY not in repr(client)
    monkeypatch.delenv("RUNAPI_BASE_URL")
    client = RunAPIProvider().client(ProviderSettings(), httpx.AsyncClient(verify=SSL_CONTEXT))
    assert client.base_url == "https://runapi.ai"

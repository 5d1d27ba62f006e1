"""Narrow client tests on httpx.MockTransport: request shape, parsing and error mapping."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from imagerouter_runflow import RunflowProvider
from imagerouter_runflow.client import RunflowClient, encode_model_id
from imagerouter_runflow.wire import list_page, output_urls
from pydantic import SecretStr

from imagerouter import errors
from imagerouter.offers import Offer
from imagerouter.provider import LoadedImage, ProviderSettings, TaskSpec, TaskState

Handler = Callable[[httpx.Request], httpx.Response]
BASE = "http://runflow.test"
RUN_ID = "0190a6f2-0000-7000-8000-000000000001"


def client_for(
    provider: RunflowProvider, key: str, handler: Handler, **settings: Any
) -> tuple[RunflowClient, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    config = ProviderSettings(api_key=SecretStr(key), base_url=BASE, **settings)
    client = provider.client(config, http)
    assert isinstance(client, RunflowClient)
    return client, http


def run(status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {"id": RUN_ID, "status_code": status, "client_ref": "task-0001", **extra}


# -- building the client --------------------------------------------------------------------


def test_client_needs_a_key(provider: RunflowProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNFLOW_API_KEY", raising=False)
    with pytest.raises(errors.MissingApiKeyError, match="RUNFLOW_API_KEY"):
        provider.client(ProviderSettings(), httpx.AsyncClient())


async def test_client_reads_key_and_base_url_from_env(
    provider: RunflowProvider, monkeypatch: pytest.MonkeyPatch, secret_key: str
) -> None:
    monkeypatch.setenv("RUNFLOW_API_KEY", secret_key)
    monkeypatch.setenv("RUNFLOW_BASE_URL", "http://env.test/")
    async with httpx.AsyncClient() as http:
        client = provider.client(ProviderSettings(timeout=7), http)
    assert isinstance(client, RunflowClient)
    assert client.base_url == "http://env.test"
    assert client.timeout == 7
    assert secret_key not in repr(client)


def test_encode_model_id() -> None:
    assert encode_model_id("openai/gpt-image-2/edit") == "openai/gpt-image-2/edit"
    assert encode_model_id("open ai/x?y") == "open%20ai/x%3Fy"
    for bad in ("openai//x", "openai/../x", "./x", ""):
        with pytest.raises(ValueError):
            encode_model_id(bad)


# -- submit ---------------------------------------------------------------------------------


async def test_submit_sends_the_documented_body(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            201, json=run(request_id="req-1"), headers={"Runflow-Request-Id": "hdr-1"}
        )

    offer = make_offer(n=6, quality="low", size="1536x1024", images=[b"x"], mask=b"m")
    task = make_task(
        offer,
        num_images=2,
        input_urls=("https://cdn.test/a.png",),
        mask_url="https://cdn.test/m.png",
        metadata={"job": "7"},
        callback_url="https://me.test/hook",
    )
    client, http = client_for(provider, secret_key, handler)
    async with http:
        submission = await client.submit(offer, task)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/v1/models/openai/gpt-image-2/edit/runs"
    assert request.headers["authorization"] == f"Bearer {secret_key}"
    assert request.headers["user-agent"] == "imagerouter-runflow/0.1.0"
    body = json.loads(request.content)
    assert body == {
        "input": {
            "prompt": "a red fox",
            "quality": "low",
            "output_format": "png",
            "image_size": {"width": 1536, "height": 1024},
            "num_images": 2,
            "image_urls": ["https://cdn.test/a.png"],
            "mask_url": "https://cdn.test/m.png",
        },
        "client_ref": task.task_id,
        "metadata": {"job": "7"},
        "callback_url": "https://me.test/hook",
    }
    assert submission.poll_ref == RUN_ID
    assert submission.state is TaskState.QUEUED
    assert submission.request_id == "req-1"
    assert submission.task_id == RUN_ID  # Runflow's run id; ours travels as client_ref
    assert submission.billed_usd is None


async def test_submit_without_callback_and_with_run_id_field(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
) -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(
            200,
            json={"run_id": "r-2", "status_code": "dispatching"},
            headers={"Runflow-Request-Id": "hdr-2"},
        )

    offer = make_offer(model="gpt-image-1.5")
    client, http = client_for(provider, secret_key, handler)
    async with http:
        submission = await client.submit(offer, make_task(offer))
    assert "callback_url" not in bodies[0]
    assert bodies[0]["input"]["background"] == "auto"
    assert submission.poll_ref == "r-2"
    assert submission.request_id == "hdr-2"
    assert submission.state is TaskState.QUEUED


async def test_submit_uses_model_id_overrides(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
) -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(201, json=run())

    offer = make_offer()
    caps = {"model_ids": {"gpt-image-2": {"generate": "openai/gpt-image-2-beta"}}}
    client, http = client_for(provider, secret_key, handler, capabilities=caps)
    async with http:
        await client.submit(offer, make_task(offer))
    assert urls == [f"{BASE}/v1/models/openai/gpt-image-2-beta/runs"]


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "accepted"),
    [
        (
            400,
            {"code": "BAD_REQUEST", "message": "bad", "errors": None},
            {},
            errors.InvalidRequestError,
            "no",
        ),
        (
            401,
            {"code": "UNAUTHORIZED", "message": "no", "errors": None},
            {},
            errors.AuthenticationError,
            "no",
        ),
        (
            403,
            {"code": "PERMISSION_DENIED", "message": "scope", "errors": None},
            {},
            errors.AuthenticationError,
            "no",
        ),
        (
            402,
            {"code": "INSUFFICIENT_CREDIT", "message": "top up", "errors": None},
            {},
            errors.InsufficientCreditsError,
            "no",
        ),
        (
            402,
            {"code": "INSUFFICIENT_CREDITS", "message": "top up"},
            {},
            errors.InsufficientCreditsError,
            "no",
        ),
        (
            404,
            {"code": "MODEL_NOT_FOUND", "message": "nope", "errors": None},
            {},
            errors.InvalidRequestError,
            "no",
        ),
        (
            409,
            {"code": "CONFLICT", "message": "dup", "errors": None},
            {},
            errors.InvalidRequestError,
            "no",
        ),
        (429, {"code": "RATE_LIMITED", "message": "slow"}, {}, errors.RateLimitedError, "no"),
        (
            503,
            {"code": "MODEL_UNAVAILABLE", "message": "down", "errors": None},
            {},
            errors.ProviderUnavailableError,
            "no",
        ),
        (
            503,
            {"code": "SERVICE_UNAVAILABLE", "message": "down"},
            {},
            errors.ProviderUnavailableError,
            "unknown",
        ),
        (
            500,
            {"code": "INTERNAL", "message": "oops"},
            {},
            errors.ProviderUnavailableError,
            "unknown",
        ),
        (502, None, {}, errors.ProviderUnavailableError, "unknown"),
    ],
)
async def test_submit_error_mapping(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
    status: int,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    error: type[errors.ProviderError],
    accepted: str,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, text="<html>bad gateway</html>", headers=headers)
        return httpx.Response(status, json=body, headers={"Runflow-Request-Id": "rq", **headers})

    offer = make_offer()
    task = make_task(offer)
    client, http = client_for(provider, secret_key, handler)
    async with http:
        with pytest.raises(error) as caught:
            await client.submit(offer, task)
    exc = caught.value
    assert type(exc) is error
    assert exc.accepted == accepted
    assert exc.status_code == status
    assert exc.provider == "runflow"
    assert exc.task_id == task.task_id
    if body is not None:
        assert exc.code == body["code"]
        assert exc.request_id == "rq"
    if isinstance(exc, errors.RateLimitedError):
        assert exc.retry_after is None


async def test_422_fields_from_errors_and_from_fastapi_detail(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
) -> None:
    answers = iter(
        [
            {
                "code": "VALIDATION_ERROR",
                "message": "invalid",
                "errors": [{"field": "input.num_images", "message": "must be <= 4"}],
            },
            {
                "detail": [
                    {"loc": ["body", "input", "prompt"], "msg": "field required", "type": "missing"}
                ]
            },
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json=next(answers))

    offer = make_offer()
    client, http = client_for(provider, secret_key, handler)
    async with http:
        with pytest.raises(errors.InvalidRequestError) as first:
            await client.submit(offer, make_task(offer))
        with pytest.raises(errors.InvalidRequestError) as second:
            await client.submit(offer, make_task(offer))
    assert first.value.fields == {"input.num_images": ["must be <= 4"]}
    assert first.value.code == "VALIDATION_ERROR"
    assert second.value.fields == {"input.prompt": ["field required"]}
    assert second.value.accepted == "no"


async def test_429_reads_retry_after(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"code": "RATE_LIMITED", "message": "slow"}, headers={"Retry-After": "3"}
        )

    offer = make_offer()
    client, http = client_for(provider, secret_key, handler)
    async with http:
        with pytest.raises(errors.RateLimitedError) as caught:
            await client.submit(offer, make_task(offer))
    assert caught.value.retry_after == 3


@pytest.mark.parametrize(
    ("exc", "error", "accepted"),
    [
        (httpx.ConnectError("refused"), errors.ConnectionFailedError, "no"),
        (httpx.ConnectTimeout("slow connect"), errors.ConnectionFailedError, "no"),
        (httpx.ReadTimeout("slow read"), errors.SubmissionUnknownError, "unknown"),
        (httpx.WriteTimeout("slow write"), errors.SubmissionUnknownError, "unknown"),
        (httpx.ReadError("reset"), errors.SubmissionUnknownError, "unknown"),
        (httpx.WriteError("broken pipe"), errors.SubmissionUnknownError, "unknown"),
        (httpx.RemoteProtocolError("closed"), errors.SubmissionUnknownError, "unknown"),
    ],
)
async def test_submit_transport_errors(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
    exc: httpx.TransportError,
    error: type[errors.ProviderError],
    accepted: str,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    offer = make_offer()
    task = make_task(offer)
    client, http = client_for(provider, secret_key, handler)
    async with http:
        with pytest.raises(error) as caught:
            await client.submit(offer, task)
    assert caught.value.accepted == accepted
    assert caught.value.task_id == task.task_id
    if error is errors.SubmissionUnknownError:
        assert caught.value.client_ref == task.task_id


@pytest.mark.parametrize("body", [b"{not json", b'{"status_code": "queued"}', b"[1, 2]"])
async def test_unreadable_2xx_create_is_malformed_and_unknown(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
    body: bytes,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, content=body)

    offer = make_offer()
    task = make_task(offer)
    client, http = client_for(provider, secret_key, handler)
    async with http:
        with pytest.raises(errors.MalformedResponseError) as caught:
            await client.submit(offer, task)
    assert caught.value.accepted == "unknown"
    assert caught.value.client_ref == task.task_id


async def test_the_key_never_appears_in_errors(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
) -> None:
    # A hostile body that echoes the key back must still not leak it.
    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"]
        if request.url.path.startswith("/v1/runs/"):
            raise httpx.ReadError(f"boom {token}")
        status = 401 if "models" in request.url.path else 500
        return httpx.Response(status, json={"code": "X", "message": f"bad {token}"})

    offer = make_offer()
    client, http = client_for(provider, secret_key, handler)
    raised: list[errors.ProviderError] = []
    async with http:
        for call in (
            lambda: client.submit(offer, make_task(offer)),
            lambda: client.get(RUN_ID),
            lambda: client.find(make_task(offer)),
        ):
            with pytest.raises(errors.ProviderError) as caught:
                await call()
            raised.append(caught.value)
    assert len(raised) == 3
    for exc in raised:
        assert secret_key not in str(exc)
        assert secret_key not in repr(exc)
        assert secret_key not in (getattr(exc, "body", None) or "")
        assert secret_key not in exc.message


# -- get ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("queued", TaskState.QUEUED),
        ("dispatching", TaskState.QUEUED),
        ("running", TaskState.RUNNING),
        ("succeeded", TaskState.SUCCEEDED),
        ("partial_succeeded", TaskState.PARTIAL),
        ("failed", TaskState.FAILED),
        ("errored", TaskState.FAILED),
        ("canceled", TaskState.CANCELED),
        ("cancelled", TaskState.CANCELED),
        ("warming_up", TaskState.RUNNING),
    ],
)
async def test_get_status_mapping(
    provider: RunflowProvider, secret_key: str, status: str, state: TaskState
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v1/runs/{RUN_ID}"
        return httpx.Response(200, json=run(status, cost="0.034", output=None))

    client, http = client_for(provider, secret_key, handler)
    async with http:
        result = await client.get(RUN_ID)
    assert result.state is state
    assert result.billed_usd == (Decimal("0.034") if state.terminal else None)


async def test_get_reads_failure_fields_and_sdk_error_shape(
    provider: RunflowProvider, secret_key: str
) -> None:
    bodies = iter(
        [
            run("failed", failure_code="PROVIDER_ERROR", failure_message="upstream said no"),
            run("failed", error={"code": "NSFW", "message": "blocked"}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(bodies))

    client, http = client_for(provider, secret_key, handler)
    async with http:
        first = await client.get(RUN_ID)
        second = await client.get(RUN_ID)
    assert (first.error, first.error_code) == ("upstream said no", "PROVIDER_ERROR")
    assert (second.error, second.error_code) == ("blocked", "NSFW")


@pytest.mark.parametrize(
    ("output", "urls"),
    [
        (
            {
                "outputs": [{"url": "u1", "type": "image"}, {"url": "u2", "type": "image"}],
                "seed": None,
            },
            ("u1", "u2"),
        ),
        ({"outputs": [{"url": "v", "type": "video"}, {"url": "u1"}]}, ("u1",)),
        ({"image_urls": ["u1", "u2"]}, ("u1", "u2")),
        ({"image": "u1"}, ("u1",)),
        ({"image": ["u1", "u2"]}, ("u1", "u2")),
        ({"image": {"url": "u1"}}, ("u1",)),
        ({"images": [{"url": "u1"}, {"url": "u2"}]}, ("u1", "u2")),
        ({"url": "u1"}, ("u1",)),
        ({"output_url": "u1"}, ("u1",)),
        ({"outputs": [{"url": "first"}], "image_urls": ["second"]}, ("first",)),
        ({"outputs": [], "image_urls": ["second"]}, ("second",)),
        ({}, ()),
        (None, ()),
    ],
)
def test_output_url_shapes(output: Any, urls: tuple[str, ...]) -> None:
    assert output_urls(output) == urls


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, errors.InvalidRequestError),
        (500, errors.ProviderUnavailableError),
        (401, errors.AuthenticationError),
    ],
)
async def test_get_errors_are_accepted_yes(
    provider: RunflowProvider, secret_key: str, status: int, error: type[errors.ProviderError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"code": "RUN_NOT_FOUND", "message": "x"})

    client, http = client_for(provider, secret_key, handler)
    async with http:
        with pytest.raises(error) as caught:
            await client.get(RUN_ID)
    assert caught.value.accepted == "yes"


async def test_get_transport_error_and_garbage_are_accepted_yes(
    provider: RunflowProvider, secret_key: str
) -> None:
    answers: list[Any] = [httpx.ConnectError("refused"), b"<<<", b"[]"]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(200, content=answer)

    client, http = client_for(provider, secret_key, handler)
    async with http:
        with pytest.raises(errors.ConnectionFailedError) as first:
            await client.get(RUN_ID)
        with pytest.raises(errors.MalformedResponseError) as second:
            await client.get(RUN_ID)
        with pytest.raises(errors.MalformedResponseError) as third:
            await client.get(RUN_ID)
    assert {first.value.accepted, second.value.accepted, third.value.accepted} == {"yes"}


# -- find -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "runs", "cursor"),
    [
        ([{"id": "a"}], 1, None),
        ({"data": [{"id": "a"}], "pq": "c2"}, 1, "c2"),
        ({"items": [{"id": "a"}, 3], "next": "c3"}, 1, "c3"),
        ({"runs": [], "cursor": "c4"}, 0, "c4"),
        ({"results": [{"id": "a"}], "next_cursor": "c5"}, 1, "c5"),
        ({"data": [], "next": "https://api.runflow.io/v1/runs?pq=c6&limit=5"}, 0, "c6"),
        ({"data": [], "meta": {"next_cursor": "c7"}}, 0, "c7"),
        ({"data": [], "next": None}, 0, None),
    ],
)
def test_list_page_shapes(body: Any, runs: int, cursor: str | None) -> None:
    found, next_cursor = list_page(body)
    assert len(found) == runs
    assert next_cursor == cursor


async def test_find_follows_cursors_and_filters_exactly(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
) -> None:
    offer = make_offer()
    task = make_task(offer)
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        if "pq" not in request.url.params:
            # A server that ignores the filter: near misses must not match.
            return httpx.Response(
                200,
                json={
                    "data": [
                        {"id": "x1", "status_code": "succeeded", "client_ref": task.task_id + "0"},
                        {"id": "x2", "status_code": "succeeded", "client_ref": None},
                    ],
                    "pq": "page2",
                },
            )
        return httpx.Response(
            200,
            json={
                "items": [
                    {"id": "hit", "status_code": "running", "client_ref": task.task_id},
                ]
            },
        )

    client, http = client_for(provider, secret_key, handler)
    async with http:
        found = await client.find(task)
    assert found is not None
    assert found.poll_ref == "hit"
    assert found.state is TaskState.RUNNING
    assert found.task_id == "hit"
    assert [url.params.get("pq") for url in seen] == [None, "page2"]
    assert seen[0].params["q"] == task.task_id
    assert seen[0].params["client_ref"] == task.task_id
    assert seen[0].params["limit"] == "100"


async def test_find_gives_up_after_a_few_pages(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            200, json={"data": [{"id": "o", "client_ref": "other"}], "pq": f"p{calls}"}
        )

    offer = make_offer()
    client, http = client_for(provider, secret_key, handler)
    async with http:
        assert await client.find(make_task(offer)) is None
    assert calls == 5


async def test_find_errors_are_accepted_unknown(
    provider: RunflowProvider,
    make_offer: Callable[..., Offer],
    make_task: Callable[..., TaskSpec],
    secret_key: str,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"code": "SERVICE_UNAVAILABLE", "message": "down"})

    offer = make_offer()
    client, http = client_for(provider, secret_key, handler)
    async with http:
        with pytest.raises(errors.ProviderUnavailableError) as caught:
            await client.find(make_task(offer))
    assert caught.value.accepted == "unknown"


# -- upload and health ----------------------------------------------------------------------


def image(size: int = 10) -> LoadedImage:
    return LoadedImage(
        name="cat.png",
        data=b"\x89PNG" + b"0" * size,
        mime_type="image/png",
        filename="cat.png",
        width=1,
        height=1,
    )


async def test_upload_three_steps_without_auth_on_the_put(
    provider: RunflowProvider, secret_key: str
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/asset-uploads":
            return httpx.Response(
                201, json={"asset_id": "a 1", "upload_url": "http://s3.test/put?sig=1"}
            )
        if request.url.host == "s3.test":
            return httpx.Response(200)
        return httpx.Response(201, json={"id": "a 1", "url": "https://signed.test/cat.png"})

    client, http = client_for(provider, secret_key, handler)
    async with http:
        url = await client.upload(image())
    assert url == "https://signed.test/cat.png"
    create, put, confirm = seen
    assert json.loads(create.content) == {
        "filename": "cat.png",
        "mime_type": "image/png",
        "size_bytes": 14,
    }
    assert create.headers["authorization"] == f"Bearer {secret_key}"
    assert put.method == "PUT"
    assert "authorization" not in put.headers
    assert put.headers["content-type"] == "image/png"
    assert put.content == image().data
    assert confirm.url.raw_path == b"/v1/asset-uploads/a%201/confirmations"
    assert json.loads(confirm.content) == {"folder_id": None}


async def test_upload_cap_is_enforced_before_sending(
    provider: RunflowProvider, secret_key: str
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500)

    client, http = client_for(provider, secret_key, handler, capabilities={"max_upload_bytes": 10})
    async with http:
        with pytest.raises(errors.InputImageError, match="upload limit"):
            await client.upload(image(100))
    assert calls == 0


async def test_upload_slot_without_url_is_malformed(
    provider: RunflowProvider, secret_key: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"asset_id": "a1"})

    client, http = client_for(provider, secret_key, handler)
    async with http:
        with pytest.raises(errors.MalformedResponseError):
            await client.upload(image())


async def test_free_check(provider: RunflowProvider, secret_key: str) -> None:
    answers = iter(
        [
            httpx.Response(200, json={"status": "ok", "version": "1"}),
            httpx.Response(200, json={"status": "degraded"}),
            httpx.Response(503, json={"code": "SERVICE_UNAVAILABLE", "message": "down"}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/health"
        return next(answers)

    client, http = client_for(provider, secret_key, handler)
    async with http:
        ok = await client.free_check()
        degraded = await client.free_check()
        down = await client.free_check()
    assert ok is not None and ok.ok
    assert degraded is not None and not degraded.ok
    assert down is not None and not down.ok and "503" in down.detail

"""The OpenAI-compatible gateway, driven by the official `openai` client over loopback:
client -> gateway (uvicorn) -> Router -> provider emulators (uvicorn) -> files and ledger.

The fixture `serve_gateway` (also used by the other test_gateway_* files) starts a gateway
app on a free port; its Router is built inside the app, on the server's event loop.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import ImagesResponse
from PIL import Image
from starlette.applications import Starlette

from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.emulation import EmulatorServer, FaultPlan
from imagerouter.gateway import Gateway, create_app
from imagerouter.plugins import Plugins
from imagerouter.router import Router

from .conftest import base_config, deep_merge

GATEWAY_KEY = "gw-test-key-0123456789"


@dataclass
class Served:
    """A running gateway. Clients made here are closed when the test ends."""

    url: str
    app: Starlette
    key: str
    clients: list[openai.OpenAI | httpx.Client] = field(default_factory=list)

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    @property
    def router(self) -> Router:
        return self.gateway.router

    def client(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.key)
        client = openai.OpenAI(base_url=f"{self.url}/v1", **kwargs)
        self.clients.append(client)
        return client

    def http(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 10)
        headers = {"authorization": f"Bearer {self.key}"}
        client = httpx.Client(base_url=self.url, headers=headers, **kwargs)
        self.clients.append(client)
        return client


ServeGateway = Callable[..., Served]


@pytest.fixture
def serve_gateway(
    emulators: Emulators, plugins: Plugins, tmp_path: Path
) -> Iterator[ServeGateway]:
    running: list[tuple[EmulatorServer, Served]] = []

    def serve(config: dict[str, Any] | None = None, *, key: str = GATEWAY_KEY) -> Served:
        data = deep_merge(base_config(tmp_path), {"gateway": {"api_keys": [key] if key else []}})
        data = deep_merge(data, config or {})
        cfg = emulators.configure(load_config(data, known_providers=plugins.providers()))
        app = create_app(cfg, plugins=plugins)
        server = EmulatorServer(app).start()
        served = Served(server.url, app, key)
        running.append((server, served))
        return served

    yield serve
    for server, served in running:
        for client in served.clients:
            client.close()
        server.stop()
        served.gateway.close()


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def items(response: ImagesResponse) -> list[openai.types.Image]:
    assert response.data is not None
    return response.data


def decoded(b64: str | None) -> Image.Image:
    assert b64 is not None
    return Image.open(io.BytesIO(base64.b64decode(b64)))


# -- the official client -----------------------------------------------------------------


def test_generate_two_images_as_b64_json(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway()
    raw = served.client().images.with_raw_response.generate(
        model="gpt-image-2", prompt="a lighthouse at dusk", n=2, response_format="b64_json"
    )
    response = raw.parse()
    assert len(items(response)) == 2
    for item in items(response):
        with decoded(item.b64_json) as image:
            assert (image.format, image.size) == ("PNG", (1024, 1024))
    assert response.output_format == "png" and response.size == "1024x1024"
    # No quality asked: counted as high, 7,024 tokens a 1024x1024 image (docs/gateway.md).
    assert response.usage is not None and response.usage.output_tokens == 2 * 7024
    assert response.usage.total_tokens == 2 * 7024 + 5  # "a lighthouse at dusk": 20 chars
    assert (response.quality, response.background) == ("high", "opaque")
    # RunAPI's gpt-image-2 at 1k is the cheapest: one task per image.
    assert raw.headers["x-imagerouter-provider"] == "runapi"
    assert raw.headers["x-imagerouter-model"] == "gpt-image-2"
    assert Decimal(raw.headers["x-imagerouter-cost-usd"]) == Decimal("0.12")
    assert Decimal(raw.headers["x-imagerouter-billed-usd"]) == Decimal("0.12")
    assert emulators.created() == {"runapi": 2, "runflow": 0}
    request_id = raw.headers["x-imagerouter-request-id"]
    ledger = served.router.ledger
    assert ledger is not None
    (row,) = ledger.history(limit=5)
    assert (row.request_id, row.status, row.images) == (request_id, "served", 2)


def test_edit_with_an_uploaded_file(
    serve_gateway: ServeGateway, emulators: Emulators, input_png: Path
) -> None:
    served = serve_gateway()
    with input_png.open("rb") as upload:
        raw = served.client().images.with_raw_response.edit(
            image=upload, prompt="make the sky purple", quality="low", response_format="url"
        )
    response = raw.parse()
    assert raw.headers["x-imagerouter-provider"] == "runflow"  # the cheapest at low quality
    (item,) = items(response)
    assert item.url is not None and item.url.startswith(f"{served.url}/v1/signed/")
    with httpx.Client(timeout=10) as plain:  # no key: the signature stands in for it
        image = plain.get(item.url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (1024, 1024)
    ledger = served.router.ledger
    assert ledger is not None
    detail = ledger.request_detail(raw.headers["x-imagerouter-request-id"])
    assert detail["request"]["operation"] == "edit"
    assert detail["request"]["request"]["images"] == ["image[0] (input.png)"]
    assert emulators.apps["runflow"].counters.uploads == 1


def test_edit_with_several_images_and_a_mask(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    response = served.client().images.edit(
        image=[("a.png", png_bytes(), "image/png"), ("b.png", png_bytes((32, 32)), "image/png")],
        mask=("mask.png", png_bytes(), "image/png"),
        prompt="combine them",
        model="gpt-image-1.5",
        quality="medium",
        n=2,
    )
    assert len(items(response)) == 2
    assert all(decoded(item.b64_json).format == "PNG" for item in items(response))


def test_a_wrong_key_is_an_authentication_error(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway()
    with pytest.raises(openai.AuthenticationError) as caught:
        served.client(api_key="sk-wrong-key-123").images.generate(prompt="a fox")
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong-key-123" not in caught.value.response.text
    with served.http() as http:
        bare = http.post("/v1/images/generations", json={"prompt": "x"},
                         headers={"authorization": ""})
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"] == "Bearer"
        assert http.get("/v1/models", headers={"authorization": "Basic abc"}).status_code == 401
    assert emulators.created() == {"runapi": 0, "runflow": 0}


def test_a_bad_size_is_a_bad_request(serve_gateway: ServeGateway, emulators: Emulators) -> None:
    served = serve_gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().images.generate(prompt="a fox", size="banana")
    assert caught.value.param == "size"
    assert caught.value.type == "invalid_request_error"
    assert "WxH" in caught.value.message
    assert emulators.created() == {"runapi": 0, "runflow": 0}


def test_a_tier_name_is_a_model(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    raw = served.client().images.with_raw_response.generate(model="draft", prompt="a fox")
    assert raw.headers["x-imagerouter-provider"] == "runflow"
    assert Decimal(raw.headers["x-imagerouter-cost-usd"]) == Decimal("0.009")


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"prompt": "x", "colour": "red"}, 400, "colour", "unknown_parameter"),
        ({"prompt": "x", "stream": "yes"}, 400, "stream", "invalid_type"),
        ({"prompt": "x", "partial_images": 4}, 400, "partial_images", "integer_out_of_range"),
        ({"prompt": "x", "n": "2"}, 400, "n", "invalid_type"),
        ({"prompt": "x", "output_compression": 101}, 400, "output_compression",
         "integer_out_of_range"),
        ({"prompt": "x", "output_compression": -1}, 400, "output_compression",
         "integer_out_of_range"),
        ({"prompt": "x", "moderation": "high"}, 400, "moderation", "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-3-2026-04-21"}, 400, "model", "model_not_found"),
        ({"prompt": "x", "svg": {"model": "m"}}, 400, "svg", "unsupported_parameter"),
        ({"prompt": "x", "n": 11}, 400, "n", "invalid_value"),
        ({"prompt": "x", "n": "two"}, 400, "n", "invalid_type"),
        ({"prompt": "x", "model": "dall-e-3"}, 400, "model", "model_not_found"),
        ({"prompt": "x", "quality": "xhigh"}, 400, "quality", "invalid_value"),
        ({"prompt": "x", "output_format": "gif"}, 400, "output_format", "invalid_value"),
        ({"prompt": "x", "response_format": "png"}, 400, "response_format", "invalid_value"),
        ({"prompt": "x", "background": "transparent", "output_format": "jpeg"}, 400,
         "background", "invalid_value"),
        ({"prompt": "x", "max_cost_usd": -1}, 400, "max_cost_usd", "invalid_value"),
        ({"n": 1}, 400, "prompt", "missing_required_parameter"),
        ({"prompt": "   "}, 400, "prompt", "invalid_value"),
        ({"prompt": "x", "size": "16x9000"}, 400, "size", "invalid_value"),  # OpenAI's rule
    ],
)
def test_bad_parameters_are_400s_naming_the_parameter(
    serve_gateway: ServeGateway,
    emulators: Emulators,
    body: dict[str, Any],
    status: int,
    param: str | None,
    code: str,
) -> None:
    served = serve_gateway()
    with served.http() as http:
        response = http.post("/v1/images/generations", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code,
                                                               "invalid_request_error")
    assert emulators.created() == {"runapi": 0, "runflow": 0}


def test_openai_parameters_without_effect_are_accepted(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    response = served.client().images.generate(
        prompt="a fox", moderation="low", style="vivid", output_compression=80,
        quality="hd", user="user-42", stream=False,
    )
    assert len(items(response)) == 1
    job = served.gateway.jobs.recent(1)[0]
    assert job.user == "user-42"


@pytest.mark.parametrize(
    ("content", "content_type", "code"),
    [
        (b"{not json", "application/json", "invalid_json"),
        (b"[1, 2]", "application/json", "invalid_json"),
        (b"\xff\xfe", "application/json", "invalid_json"),
        (b"[" * 100_000, "application/json", "invalid_json"),
    ],
)
def test_unreadable_bodies_are_400s(
    serve_gateway: ServeGateway, content: bytes, content_type: str, code: str
) -> None:
    served = serve_gateway()
    with served.http() as http:
        response = http.post("/v1/images/generations", content=content,
                             headers={"content-type": content_type})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_budget_exhausted_is_429_insufficient_quota_and_not_retried(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway({"budget": {"total_usd": "0.01"}})
    with pytest.raises(openai.RateLimitError) as caught:
        served.client(max_retries=2).images.generate(prompt="a fox")
    assert caught.value.code == "budget_exceeded"
    assert caught.value.type == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert emulators.created() == {"runapi": 0, "runflow": 0}
    assert served.gateway.metrics.http[
        (("route", "generations"), ("method", "POST"), ("status", "429"))
    ] == 1  # the client obeyed x-should-retry


def test_provider_failure_after_failover_is_a_5xx_and_shows_in_metrics(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    for app in emulators.apps.values():
        app.options.faults = FaultPlan.parse("create:task_failed")
    served = serve_gateway({"health": {"failure_threshold": 1}, "routing": {"max_attempts": 2}})
    with pytest.raises(openai.InternalServerError) as caught:
        served.client(max_retries=2).images.generate(prompt="a fox")
    error = caught.value
    assert error.status_code == 502 and error.code == "job_failed"
    assert error.type == "server_error"
    assert error.response.headers["x-should-retry"] == "false"
    request_id = error.response.headers["x-imagerouter-request-id"]
    assert request_id in error.message
    # One create per attempt (routing.max_attempts 2): the client did not retry.
    assert emulators.created() == {"runapi": 1, "runflow": 1}
    with served.http() as http:
        metrics = http.get("/metrics").text
    assert 'imagerouter_request_failures_total{error_type="JobFailedError"} 1' in metrics
    assert 'imagerouter_attempts_total{provider="runapi",model="gpt-image-2",outcome="failed"} 1' \
        in metrics
    assert ('imagerouter_backend_state{provider="runapi",model="gpt-image-2",'
            'operation="generate",state="ejected"} 1') in metrics
    assert ('imagerouter_backend_up{provider="runapi",model="gpt-image-2",'
            'operation="generate"} 0') in metrics


def test_models_list_the_models_and_the_tiers(serve_gateway: ServeGateway) -> None:
    client = serve_gateway().client()
    ids = [model.id for model in client.models.list()]
    assert ids[:2] == ["gpt-image-2", "gpt-image-1.5"]
    assert {"draft", "standard", "premium"} <= set(ids)
    assert client.models.retrieve("standard").owned_by == "imagerouter"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")


def test_healthz_is_open_and_metrics_need_the_key(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    served.client().images.generate(prompt="a fox")
    health = httpx.get(f"{served.url}/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["auth"] is True
    assert body["backends_available"] == 8
    assert body["jobs"]["succeeded"] == 1
    assert httpx.get(f"{served.url}/metrics").status_code == 401
    with served.http() as http:
        metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'imagerouter_requests_total{provider="runapi",model="gpt-image-2",outcome="served"} 1' \
        in text
    assert 'imagerouter_spend_usd_total{provider="runapi",model="gpt-image-2"} 0.06' in text
    assert 'imagerouter_images_total{provider="runapi",model="gpt-image-2"} 1' in text
    assert ('imagerouter_request_duration_seconds_count{provider="runapi",outcome="served"} 1'
            in text)
    assert ('imagerouter_http_requests_total{route="generations",method="POST",status="200"} 1'
            in text)
    assert 'imagerouter_jobs{status="succeeded"} 1' in text
    assert ('imagerouter_backend_up{provider="runflow",model="gpt-image-1.5",'
            'operation="edit"} 1') in text


def test_unknown_routes_answer_in_openai_shape(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    with served.http() as http:
        missing = http.get("/v1/chat/completions")
        wrong_method = http.get("/v1/images/generations")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()


def test_without_keys_anyone_on_loopback_may_call(serve_gateway: ServeGateway) -> None:
    served = serve_gateway(key="")
    response = served.client(api_key="anything").images.generate(prompt="a fox")
    assert len(items(response)) == 1
    assert httpx.get(f"{served.url}/healthz").json()["auth"] is False

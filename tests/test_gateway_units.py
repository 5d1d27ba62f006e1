"""The gateway's pieces on their own: parameter mapping, error mapping, keys, signatures,
metrics text, the `gateway` config section and `imagerouter serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from imagerouter.cli.serve_cmd import binding_problem, serve
from imagerouter.config import default_config, load_config
from imagerouter.errors import (
    BudgetExceededError,
    ConfigError,
    InputImageError,
    InvalidRequestError,
    JobTimedOutError,
    MissingApiKeyError,
    NoEligibleOfferError,
    ProviderUnavailableError,
    RequestValidationError,
    SubmissionUnknownError,
)
from imagerouter.events import AttemptEvent, ResultEvent
from imagerouter.gateway.auth import KeyCheck, is_loopback
from imagerouter.gateway.callbacks import ReplayGuard, read_note, sign, signature_matches
from imagerouter.gateway.errors import ApiError, api_error_from
from imagerouter.gateway.metrics import Metrics
from imagerouter.gateway.openai_shapes import parse_image_call

CONFIG = default_config()


def parse(**values: object) -> dict[str, object]:
    call = parse_image_call(values, operation="generate", config=CONFIG,
                            response_format_default="b64_json")
    return call.fields


# -- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quality", "expected"),
    [("low", "low"), ("medium", "medium"), ("HIGH", "high"), ("auto", None),
     ("standard", "medium"), ("hd", "high")],
)
def test_quality_mapping(quality: str, expected: str | None) -> None:
    assert parse(prompt="x", quality=quality).get("quality") == expected


def test_sizes_models_tiers_and_extensions() -> None:
    assert parse(prompt="x", size="1536x1024", model="gpt-image-1.5", n=3) == {
        "size": "1536x1024", "model": "gpt-image-1.5", "n": 3}
    assert parse(prompt="x", model="premium") == {"tier": "premium"}
    assert parse(prompt="x", tier="draft", model="gpt-image-2") == {"tier": "draft"}
    assert parse(prompt="x", output_format="jpg", providers="runapi, runflow",
                 max_cost_usd=Decimal("0.5")) == {
        "output_format": "jpeg", "providers": ("runapi", "runflow"),
        "max_cost_usd": Decimal("0.5")}
    call = parse_image_call({"prompt": "x", "safety_identifier": "u-1", "moderation": "low",
                             "n": None}, operation="generate", config=CONFIG,
                            response_format_default="url")
    assert (call.user, call.response_format, call.ignored) == ("u-1", "url", ())
    assert call.moderation == "low"  # kept on the call, for backends that take it


@pytest.mark.parametrize(
    ("values", "param"),
    [
        ({"prompt": "x", "image": "a.png"}, "image"),  # edits only
        ({"prompt": "x", "model": "draft", "tier": "premium"}, "model"),
        ({"prompt": "x", "tier": "gold"}, "tier"),
        ({"prompt": "x", "n": True}, "n"),
        ({"prompt": "x", "max_cost_usd": "lots"}, "max_cost_usd"),
        ({"prompt": "x", "max_cost_usd": "NaN"}, "max_cost_usd"),
        ({"prompt": "x", "providers": [1]}, "providers"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x" * 32_001}, "prompt"),
        ({"prompt": "x", "partial_images": 4}, "partial_images"),
    ],
)
def test_bad_values_name_their_parameter(values: dict[str, object], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse(**values)
    assert caught.value.status == 400 and caught.value.param == param


# -- errors ------------------------------------------------------------------------------


def test_errors_map_to_openai_statuses() -> None:
    cases = [
        (RequestValidationError("images[0]", "bad"), 400, "image", "invalid_value"),
        (InputImageError("mask (m.png)", "not an image"), 400, "mask", "invalid_image"),
        (InvalidRequestError("refused", provider="runapi", fields={"size": ["no"]}), 400,
         "size", "provider_rejected"),
        (NoEligibleOfferError("none can", [object()]), 400, None, "no_eligible_backend"),
        (NoEligibleOfferError("no healthy backend"), 503, None, "no_backend_available"),
        (BudgetExceededError("over the daily budget"), 429, None, "budget_exceeded"),
        (ProviderUnavailableError("down", provider="runflow"), 502, None,
         "provider_unavailable"),
        (JobTimedOutError("still running", provider="runapi"), 504, None, "job_timed_out"),
        (MissingApiKeyError("runapi", "RUNAPI_API_KEY"), 503, None, "provider_not_configured"),
        (ConfigError("bad"), 500, None, "config"),
        (RuntimeError("boom"), 500, None, "internal"),
    ]
    for exc, status, param, code in cases:
        error = api_error_from(exc, request_id="ir-1")
        assert (error.status, error.param, error.code) == (status, param, code), exc
        assert (error.type == "server_error") == (status >= 500)
    assert api_error_from(RuntimeError("secret detail")).message == "internal error (RuntimeError)"


def test_an_unknown_submission_says_possibly_billed_and_names_the_request() -> None:
    exc = SubmissionUnknownError("no answer", provider="runflow", client_ref="ir-x-1")
    error = api_error_from(exc, request_id="ir-20261122-000000-abcd1234")
    assert error.status == 502 and error.code == "submission_unknown"
    assert "possibly billed" in error.message
    assert "ir-20261122-000000-abcd1234" in error.message


# -- keys and signatures -----------------------------------------------------------------


def test_key_check() -> None:
    check = KeyCheck([SecretStr("key-one"), SecretStr("key-two")])
    assert check.allows("Bearer key-two") and check.allows("bearer   key-one ")
    for header in (None, "", "Bearer", "Bearer key-on", "Basic key-one", "key-one",
                   "Bearer key-one-and-more"):
        assert not check.allows(header), header
    assert "key-one" not in repr(check)
    assert KeyCheck([]).allows(None) and not KeyCheck([]).enabled


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
     ("example.com", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_signatures() -> None:
    body = b'{"run_id": "r-1", "status": "succeeded"}'
    good = sign("s3cret", body)
    assert len(good) == 64 and good == good.lower()
    assert signature_matches("s3cret", body, good)
    assert signature_matches("s3cret", body, good.upper())
    assert signature_matches("s3cret", body, f"sha256={good}")
    assert signature_matches("s3cret", body, f"{'0' * 64}, {good}")  # rotation: any matches
    assert not signature_matches("s3cret", body + b" ", good)
    assert not signature_matches("other", body, good)
    assert not signature_matches("s3cret", body, None)


def test_replay_guard_and_notes() -> None:
    guard = ReplayGuard(capacity=2)
    note = read_note("runflow", b'{"run_id": "r-1", "event": "run.completed"}')
    assert note.key == ("runflow", "r-1", "run.completed")
    assert guard.first_time(note.key) and not guard.first_time(note.key)
    assert guard.first_time(("runflow", "r-2", "x")) and guard.first_time(("runflow", "r-3", "x"))
    assert guard.first_time(note.key)  # forgotten beyond capacity
    assert read_note("runapi", b'{"id": 42, "status": "completed"}').task_id == "42"
    assert read_note("other", b'{"task_id": "t-9"}').task_id == "t-9"


# -- metrics -----------------------------------------------------------------------------


def test_metrics_text_format() -> None:
    metrics = Metrics()
    metrics.event(AttemptEvent(request_id="r", attempt=1, provider='we"ird\\', model="m",
                               operation="generate", outcome="failed", accepted="no",
                               error_type="RateLimitedError", quoted_usd=Decimal(0)))
    metrics.event(AttemptEvent(request_id="r", attempt=2, provider="runapi", model="m",
                               operation="generate", outcome="served", accepted="yes",
                               quoted_usd=Decimal("0.06"), billed_usd=Decimal("0.05")))
    metrics.event(ResultEvent(request_id="r", ok=True, provider="runapi", model="m",
                              attempts=2, images=1, elapsed_s=3.0))
    metrics.http_request("generations", "POST", 200)
    text = metrics.render([], {"running": 0})
    assert 'imagerouter_attempt_failures_total{provider="we\\"ird\\\\",' \
           'error_type="RateLimitedError"} 1' in text
    assert 'imagerouter_spend_usd_total{provider="runapi",model="m"} 0.06' in text
    assert 'imagerouter_billed_usd_total{provider="runapi",model="m"} 0.05' in text
    assert 'imagerouter_request_duration_seconds_bucket{provider="runapi",outcome="served",' \
           'le="2.5"} 0' in text
    assert 'imagerouter_request_duration_seconds_bucket{provider="runapi",outcome="served",' \
           'le="5"} 1' in text
    assert 'le="+Inf"} 1' in text
    assert "# TYPE imagerouter_request_duration_seconds histogram" in text
    for line in text.splitlines():
        assert line.startswith("#") or line.split(" ")[-1].replace(".", "").isdigit(), line


# -- config ------------------------------------------------------------------------------


def test_gateway_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_KEY_A", "alpha-key-123")
    monkeypatch.setenv("GW_KEYS", "k1,k2 , k3")
    config = load_config({"gateway": {"api_keys": ["${GW_KEY_A}"]}})
    assert [k.get_secret_value() for k in config.gateway.api_keys] == ["alpha-key-123"]
    assert "alpha-key-123" not in repr(config) + str(config.public_dict())
    several = load_config({"gateway": {"api_keys": "${GW_KEYS}"}})
    assert [k.get_secret_value() for k in several.gateway.api_keys] == ["k1", "k2", "k3"]
    with pytest.raises(ConfigError, match="GW_UNSET_KEY is not set") as caught:
        load_config({"gateway": {"api_keys": ["${GW_UNSET_KEY}"]}})
    assert caught.value.key == "gateway.api_keys[0]"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"api_keys": [12345678901]}, "gateway.api_keys: each key must be text"),
        ({"api_keys": ["has space"]}, "gateway.api_keys: a gateway key must be non-empty"),
        ({"public_base_url": "gw.example"}, "gateway.public_base_url: must be an http(s) URL"),
        ({"runflow_callback_secret": 99999999}, "gateway.runflow_callback_secret: must be text"),
        ({"max_body_bytes": 0}, "gateway.max_body_bytes: must be a number greater than 0"),
        ({"response_format_default": "png"}, "'png' is not one of b64_json, url"),
    ],
)
def test_bad_gateway_settings(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"gateway": section})
    assert message in str(caught.value)
    assert "12345678901" not in str(caught.value) and "99999999" not in str(caught.value)


def test_gateway_defaults() -> None:
    settings = load_config({"gateway": {"public_base_url": "https://gw.example/"}}).gateway
    assert settings.public_base_url == "https://gw.example"
    assert settings.api_keys == [] and settings.response_format_default == "b64_json"
    assert settings.max_body_bytes == 60 * 1024 * 1024 and settings.output_dir is None


# -- imagerouter serve -------------------------------------------------------------------


def test_serve_refuses_a_public_address_without_keys() -> None:
    open_config = load_config({})
    keyed = load_config({"gateway": {"api_keys": ["k-1"]}})
    assert binding_problem("127.0.0.1", open_config) is None
    assert binding_problem("0.0.0.0", keyed) is None
    problem = binding_problem("0.0.0.0", open_config)
    assert problem is not None and "gateway.api_keys" in problem
    result = CliRunner().invoke(serve, ["--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0" in result.output


def test_serve_faults_need_emulate() -> None:
    result = CliRunner().invoke(serve, ["--faults", "runapi=create:503"])
    assert result.exit_code == 2 and "--emulate" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_emulate_answers_the_openai_api(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"output: {{dir: {tmp_path / 'out'}}}\nledger: {{path: {tmp_path / 'l.db'}}}\n"
        "gateway:\n  api_keys:\n    - ${GW_SERVE_KEY}\n"
    )
    env = {**os.environ, "GW_SERVE_KEY": "serve-key-1"}
    code = "from imagerouter.cli.serve_cmd import serve; serve()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--config", str(config), "--port", str(port), "--emulate"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        response = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a fox"},
                              headers={"authorization": "Bearer serve-key-1"}, timeout=20)
        assert response.status_code == 200, response.text
        assert response.headers["x-imagerouter-provider"] in ("runapi", "runflow")
        assert len(response.json()["data"]) == 1
        assert httpx.post(f"{url}/v1/images/generations", json={"prompt": "a fox"},
                          headers={"authorization": "Bearer wrong"}).status_code == 401
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert "imagerouter gateway on http://127.0.0.1" in output
    assert "emulated" in output
    assert "serve-key-1" not in output
    assert list((tmp_path / "out").glob("*.png"))


# -- gateway state -----------------------------------------------------------------------


def test_gateway_secrets_join_the_log_redactor() -> None:
    from imagerouter.gateway import Gateway
    from imagerouter.redact import default_redactor

    config = load_config({"gateway": {"api_keys": ["gw-secret-key-4242"],
                                      "runflow_callback_secret": "whsec_redact_me_777"}})
    Gateway(config)
    text = default_redactor().redact("Bearer gw-secret-key-4242 and whsec_redact_me_777")
    assert "gw-secret-key-4242" not in text and "whsec_redact_me_777" not in text


async def test_job_store_evicts_finished_jobs_and_drain_cancels_the_rest() -> None:
    import asyncio

    from imagerouter.gateway.jobs import JobStore
    from imagerouter.gateway.openai_shapes import ImageCall

    call = ImageCall(operation="generate", prompt="x", fields={}, response_format="url")
    store = JobStore(max_jobs=2)
    release = asyncio.Event()

    async def quick(job: object) -> Any:
        raise RequestValidationError("size", "bad")

    async def stuck(job: object) -> Any:
        await release.wait()

    first = store.start(call, quick)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert first.status == "failed" and first.error is not None and first.error.status == 400
    hanging = store.start(call, stuck)
    third = store.start(call, stuck)
    assert store.get(first.id) is None  # the finished one made room
    assert store.get(hanging.id) is hanging and len(store.recent(10)) == 2
    await store.drain(0.01)
    assert hanging.status == third.status == "failed"
    assert hanging.error is not None and hanging.error.code == "gateway_stopped"
    assert hanging.call is None  # the inputs are let go


def test_an_unwritable_gateway_output_dir_is_a_server_fault_that_hides_its_path() -> None:
    from imagerouter.outputs import OutputDirError

    error = api_error_from(OutputDirError("/srv/secret-images: read-only file system"))
    assert error.status == 500
    assert error.code == "output_dir_unwritable"
    assert "/srv/secret-images" not in error.message

"""Provider callbacks at the gateway: verified, deduplicated, and only a hint that wakes the
job's own (authenticated) poll. Jobs here poll every 30 s, so finishing fast needs the nudge."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from imagerouter_runflow.emulator import emulator_state

from imagerouter.emulated import Emulators
from imagerouter.gateway.callbacks import sign

from .test_gateway import Served, ServeGateway, serve_gateway
from .test_gateway_jobs import wait_for_job

__all__ = ["serve_gateway"]

RUNFLOW_SECRET = "whsec_test_0123456789abcdef"
RUNAPI_SECRET = "runapi-listen-secret-42"
SLOW_POLLS = {"poll_interval": 30, "poll_deadline": 60, "timeout": 5}


def serve_with_callbacks(serve_gateway: ServeGateway, **gateway: Any) -> Served:
    return serve_gateway({
        "providers": {"runapi": dict(SLOW_POLLS), "runflow": dict(SLOW_POLLS)},
        "gateway": {"public_base_url": "https://gw.example/", **gateway},
    })


def start_job_on(served: Served, provider: str) -> tuple[str, str]:
    """Start a job routed to `provider`; return (job id, the provider's task id) once the
    job is polling."""
    response = served.http().post(
        "/v1/images/jobs", json={"prompt": "a fox", "providers": [provider]}
    )
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        polling = [task for name, task in list(served.router.waiters) if name == provider]
        if polling:
            time.sleep(0.1)  # the emulated job (20 ms) is done at the provider now
            return response.json()["id"], polling[0]
        time.sleep(0.01)
    raise AssertionError("the job never started polling")


def post_callback(served: Served, provider: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{served.url}/callbacks/{provider}", content=body,
                      headers={"content-type": "application/json", **headers})


def runflow_body(run_id: str, status: str = "succeeded") -> bytes:
    return json.dumps({"event": "run.completed", "run_id": run_id, "status": status,
                       "output": {"outputs": []}, "metadata": None}).encode()


def test_signed_runflow_callback_nudges_the_job_and_a_replay_is_ignored(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_with_callbacks(serve_gateway, runflow_callback_secret=RUNFLOW_SECRET)
    job_id, run_id = start_job_on(served, "runflow")
    (run,) = emulator_state(emulators.apps["runflow"]).book.all()
    assert run.extra["callback_url"] == "https://gw.example/callbacks/runflow"
    polls_before = emulators.apps["runflow"].counters.polls

    body = runflow_body(run_id)
    first = post_callback(served, "runflow", body, **{"Runflow-Signature": sign(RUNFLOW_SECRET,
                                                                                  body)})
    assert first.status_code == 200
    assert first.json() == {"received": True, "duplicate": False, "nudged": True}
    done = wait_for_job(served, job_id, timeout=5)
    assert done["status"] == "succeeded" and done["provider"] == "runflow"
    # The callback was not trusted: the job polled the provider itself to finish.
    assert emulators.apps["runflow"].counters.polls > polls_before

    replay = post_callback(served, "runflow", body, **{"Runflow-Signature": sign(RUNFLOW_SECRET,
                                                                                   body)})
    assert replay.status_code == 200
    assert replay.json() == {"received": True, "duplicate": True, "nudged": False}
    with served.http() as http:
        metrics = http.get("/metrics").text
    assert 'imagerouter_callbacks_total{provider="runflow",result="nudged"} 1' in metrics
    assert 'imagerouter_callbacks_total{provider="runflow",result="duplicate"} 1' in metrics


@pytest.mark.parametrize(
    "signature",
    [None, "", "0" * 64, "not-hex", sign("another-secret", runflow_body("run-1"))],
)
def test_runflow_callbacks_with_a_bad_signature_are_refused(
    serve_gateway: ServeGateway, signature: str | None
) -> None:
    served = serve_with_callbacks(serve_gateway, runflow_callback_secret=RUNFLOW_SECRET)
    headers = {} if signature is None else {"Runflow-Signature": signature}
    response = post_callback(served, "runflow", runflow_body("run-1"), **headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    # A refused callback is not remembered: the genuine one still counts.
    body = runflow_body("run-1")
    good = post_callback(served, "runflow", body,
                         **{"Runflow-Signature": sign(RUNFLOW_SECRET, body)})
    assert good.json() == {"received": True, "duplicate": False, "nudged": False}


def test_a_signature_over_other_bytes_is_refused(serve_gateway: ServeGateway) -> None:
    served = serve_with_callbacks(serve_gateway, runflow_callback_secret=RUNFLOW_SECRET)
    signed = runflow_body("run-1")
    tampered = signed.replace(b"succeeded", b"failed___")
    response = post_callback(served, "runflow", tampered,
                             **{"Runflow-Signature": sign(RUNFLOW_SECRET, signed)})
    assert response.status_code == 401


def test_runapi_callback_without_a_secret_is_a_hint(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_with_callbacks(serve_gateway)
    job_id, task_id = start_job_on(served, "runapi")
    body = json.dumps({"id": task_id, "status": "completed"}).encode()
    response = post_callback(served, "runapi", body)
    assert response.json()["nudged"] is True
    assert wait_for_job(served, job_id)["status"] == "succeeded"


def test_runapi_callback_with_a_secret_needs_a_signature(serve_gateway: ServeGateway) -> None:
    served = serve_with_callbacks(serve_gateway, runapi_callback_secret=RUNAPI_SECRET)
    body = json.dumps({"id": "task-9", "status": "completed"}).encode()
    assert post_callback(served, "runapi", body).status_code == 401
    assert post_callback(served, "runapi", body, **{"X-RunAPI-Signature": "sha256=00"}
                         ).status_code == 401
    good = post_callback(served, "runapi", body,
                         **{"X-RunAPI-Signature": f"sha256={sign(RUNAPI_SECRET, body)}"})
    assert good.status_code == 200
    assert good.json() == {"received": True, "duplicate": False, "nudged": False}


@pytest.mark.parametrize(
    ("provider", "body", "status"),
    [
        ("runflow", b"not json", 400),
        ("runflow", b"[1]", 400),
        ("runflow", b'{"status": "succeeded"}', 400),
        ("runflow", b'{"run_id": "../../etc", "status": "x"}', 400),
        ("nosuch", b'{"id": "x"}', 404),
    ],
)
def test_unusable_callbacks(
    serve_gateway: ServeGateway, provider: str, body: bytes, status: int
) -> None:
    served = serve_with_callbacks(serve_gateway)
    response = post_callback(served, provider, body)
    assert response.status_code == status
    assert "error" in response.json()


def test_callbacks_need_no_gateway_key_but_are_size_capped(serve_gateway: ServeGateway) -> None:
    served = serve_with_callbacks(serve_gateway)
    huge = b'{"id": "x", "pad": "' + b"a" * (1024 * 1024) + b'"}'
    assert post_callback(served, "runapi", huge).status_code == 400
    assert post_callback(served, "runapi", b'{"id": "t-1"}').status_code == 200


def test_without_a_public_url_no_callback_is_requested(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway()
    served.client().images.generate(prompt="a fox", quality="low")  # routed to Runflow
    (run,) = emulator_state(emulators.apps["runflow"]).book.all()
    assert run.extra["callback_url"] is None

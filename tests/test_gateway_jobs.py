"""Long jobs through the gateway: 202 at once, status by id, files by id, and paid work that
survives a client going away."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imagerouter.emulated import Emulators
from imagerouter.emulation import FaultPlan, LatencyModel

from .test_gateway import Served, ServeGateway, png_bytes, serve_gateway

__all__ = ["serve_gateway"]  # the fixture, imported for this module


def slow_emulators(emulators: Emulators, seconds: float) -> None:
    for app in emulators.apps.values():
        app.options.latency = LatencyModel("fixed", seconds)


def wait_for_job(served: Served, job_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with served.http() as http:
        while True:
            response = http.get(f"/v1/images/jobs/{job_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
                return body
            time.sleep(0.02)


def test_a_job_is_accepted_at_once_and_served_by_id(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    slow_emulators(emulators, 0.4)
    served = serve_gateway()
    http = served.http()
    accepted = http.post("/v1/images/jobs", json={"prompt": "a fox", "n": 2})
    assert accepted.status_code == 202
    job = accepted.json()
    # Not a timing: a gateway that waited for the 0.4 s job would answer it as finished.
    assert job["object"] == "image.job" and job["status"] in ("queued", "running")
    assert accepted.headers["location"] == f"/v1/images/jobs/{job['id']}"

    done = wait_for_job(served, job["id"])
    assert done["status"] == "succeeded"
    assert (done["provider"], done["served_model"], done["cost_usd"]) == (
        "runapi", "gpt-image-2", "0.12")
    ledger = served.router.ledger
    assert ledger is not None
    assert [row.request_id for row in ledger.history()] == [done["request_id"]]
    urls = [item["url"] for item in done["result"]["data"]]
    assert len(urls) == 2 and all("b64_json" not in item for item in done["result"]["data"])
    assert len(done["file_ids"]) == 2
    for url, file_id in zip(urls, done["file_ids"], strict=True):
        image = http.get(url)
        assert image.status_code == 200
        assert Image.open(io.BytesIO(image.content)).size == (1024, 1024)
        assert http.get(f"/v1/files/{file_id}/content").content == image.content
    listed = http.get("/v1/images/jobs", params={"limit": 5}).json()["data"]
    assert [item["id"] for item in listed] == [job["id"]]


def test_a_job_may_ask_for_b64_json(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    job = served.http().post("/v1/images/jobs", json={"prompt": "a fox",
                                                      "response_format": "b64_json"}).json()
    done = wait_for_job(served, job["id"])
    (item,) = done["result"]["data"]
    assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).format == "PNG"


def test_a_multipart_job_is_an_edit(serve_gateway: ServeGateway, emulators: Emulators) -> None:
    served = serve_gateway()
    accepted = served.http().post(
        "/v1/images/jobs",
        data={"prompt": "make it blue", "quality": "low"},
        files=[("image[]", ("a.png", png_bytes(), "image/png"))],
    )
    assert accepted.status_code == 202, accepted.text
    done = wait_for_job(served, accepted.json()["id"])
    assert (done["status"], done["operation"], done["provider"]) == (
        "succeeded", "edit", "runflow")
    assert emulators.apps["runflow"].counters.uploads == 1


def test_a_failed_job_carries_an_openai_error(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    for app in emulators.apps.values():
        app.options.faults = FaultPlan.parse("create:task_failed")
    served = serve_gateway({"routing": {"max_attempts": 2}})
    job = served.http().post("/v1/images/jobs", json={"prompt": "a fox"}).json()
    done = wait_for_job(served, job["id"])
    assert done["status"] == "failed" and done["status_code"] == 502
    assert done["error"]["code"] == "job_failed" and done["error"]["type"] == "server_error"
    assert done["request_id"] in done["error"]["message"]
    assert "result" not in done


def test_a_bad_job_is_refused_before_it_is_accepted(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway()
    response = served.http().post("/v1/images/jobs", json={"prompt": "x", "size": "banana"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "size"
    assert served.gateway.jobs.recent(10) == []


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/images/jobs/imgjob_nope", 404),
        ("/v1/files/file-nope", 404),
        ("/v1/files/file-nope/content", 404),
        ("/v1/images/jobs?limit=0", 400),
        ("/v1/images/jobs?limit=abc", 400),
    ],
)
def test_unknown_ids_and_bad_queries(serve_gateway: ServeGateway, path: str,
                                     status: int) -> None:
    response = serve_gateway().http().get(path)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_client_that_disconnects_does_not_lose_the_job(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    slow_emulators(emulators, 0.5)
    served = serve_gateway()
    impatient = served.http(timeout=httpx.Timeout(5.0, read=0.1))
    with pytest.raises(httpx.ReadTimeout):
        impatient.post("/v1/images/generations", json={"prompt": "a slow fox"})
    impatient.close()  # the connection is gone; the job must go on

    # On a cold start the client may give up before the gateway has even registered the job
    # (the Router is built on first use); the request is still handled, so wait for it.
    deadline = time.monotonic() + 10
    while not served.gateway.jobs.recent(1):
        assert time.monotonic() < deadline, "the gateway never started the job"
        time.sleep(0.02)
    (job,) = served.gateway.jobs.recent(1)
    done = wait_for_job(served, job.id)
    assert done["status"] == "succeeded"
    ledger = served.router.ledger
    assert ledger is not None
    (row,) = ledger.history()
    assert (row.request_id, row.status, row.images) == (done["request_id"], "served", 1)
    images = ledger.request_detail(row.request_id)["images"]
    assert len(images) == 1 and Path(images[0]["path"]).is_file()
    assert emulators.created() == {"runapi": 1, "runflow": 0}  # nothing was resent

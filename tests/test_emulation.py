"""The shared emulator toolkit: fault plans, latency, counters, images, jobs and the server."""

from __future__ import annotations

import asyncio
import io
import random
import socket
import threading
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagerouter.emulation import (
    ConnectionDropped,
    EmulatedJob,
    EmulatorCounters,
    EmulatorOptions,
    EmulatorServer,
    Fault,
    FaultPlan,
    JobBook,
    LatencyModel,
    drop_connection,
    render_image,
)
from imagerouter.emulation import jobs as jobs_module

# --- latency ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.05", LatencyModel("fixed", 0.05)),
        ("fixed:2", LatencyModel("fixed", 2.0)),
        ("uniform:0.01,0.05", LatencyModel("uniform", 0.01, 0.05)),
        ("lognormal:4,30", LatencyModel("lognormal", 4.0, 30.0)),
        (" LogNormal:4, 30 ", LatencyModel("lognormal", 4.0, 30.0)),
    ],
)
def test_latency_parse(text: str, expected: LatencyModel) -> None:
    assert LatencyModel.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("gamma:1,2", "unknown kind 'gamma'"),
        ("uniform:1", "takes 2"),
        ("fixed:a", "expected numbers"),
        ("uniform:5,1", "low <= high"),
        ("lognormal:30,4", "p50 <= p95"),
        ("-1", "negative"),
    ],
)
def test_latency_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        LatencyModel.parse(text)


def test_latency_samples_follow_the_model() -> None:
    rng = random.Random(7)
    assert LatencyModel.parse("0.2").sample(rng) == 0.2
    uniform = [LatencyModel.parse("uniform:1,2").sample(rng) for _ in range(500)]
    assert all(1 <= x <= 2 for x in uniform)
    lognormal = sorted(LatencyModel.parse("lognormal:4,30").sample(rng) for _ in range(4000))
    median, p95 = lognormal[2000], lognormal[3800]
    assert 3.5 < median < 4.5
    assert 24 < p95 < 37


def test_options_pick_edit_latency() -> None:
    options = EmulatorOptions(edit_latency=LatencyModel("fixed", 1.0))
    assert options.latency_for("generate") == LatencyModel("fixed", 0.05)
    assert options.latency_for("edit") == LatencyModel("fixed", 1.0)
    assert EmulatorOptions().latency_for("edit") == LatencyModel("fixed", 0.05)
    assert not EmulatorOptions().faults.rules  # each options object gets its own empty plan
    assert EmulatorOptions().faults is not EmulatorOptions().faults


# --- fault plans -----------------------------------------------------------------------


def test_fault_plan_parses_every_rule_form() -> None:
    plan = FaultPlan.parse(
        "create:503@0.3; poll:500@0.1;create:429@1:retry_after=2;"
        "download:truncated; upload:seq=reset,ok"
    )
    assert plan.rules == [
        "create:503@0.3",
        "poll:500@0.1",
        "create:429@1:retry_after=2",
        "download:truncated",
        "upload:seq=reset,ok",
    ]
    assert FaultPlan.parse(["create:hang", "any:reset@0"]).rules == ["create:hang", "any:reset@0"]
    assert FaultPlan.parse(None).rules == []
    assert FaultPlan.parse("  ").rules == []
    assert FaultPlan.none().draw("create") is None


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("create:504", "unknown fault kind '504'"),
        ("submit:503", "unknown endpoint 'submit'"),
        ("create", "expected 'endpoint:kind"),
        ("create:503@1.5", "between 0 and 1"),
        ("create:503@often", "probability 'often' is not a number"),
        ("create:truncated", "'truncated' only applies to download"),
        ("poll:task_failed", "'task_failed' only applies to create"),
        ("create:429:wait=2", "unknown option 'wait=2'"),
        ("create:429:retry_after=soon", "retry_after 'soon' is not a number"),
        ("create:seq=429,,ok", "empty step"),
        ("create:seq=429,boom", "unknown fault kind 'boom'"),
        ("create:ok", "only meaningful inside seq"),
        ("create:503; poll:nope", "poll:nope"),
    ],
)
def test_fault_plan_rejects_bad_specs(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        FaultPlan.parse(spec)


def test_probability_is_statistically_sensible_and_seeded() -> None:
    plan = FaultPlan.parse("create:503@0.3", seed=1)
    draws = [plan.draw("create") for _ in range(4000)]
    hits = sum(1 for fault in draws if fault is not None)
    assert 0.27 < hits / 4000 < 0.33
    assert {fault for fault in draws if fault is not None} == {Fault("503")}
    # Other endpoints are untouched.
    assert all(plan.draw("poll") is None for _ in range(100))
    # The same seed replays the same decisions.
    again = FaultPlan.parse("create:503@0.3", seed=1)
    assert [again.draw("create") for _ in range(4000)] == draws
    assert all(FaultPlan.parse("create:503@0").draw("create") is None for _ in range(200))


def test_scripted_sequence_then_normal_forever() -> None:
    plan = FaultPlan.parse("create:seq=429,ok,503:retry_after=2")
    got = [plan.draw("create") for _ in range(6)]
    assert got == [Fault("429", 2.0), None, Fault("503", 2.0), None, None, None]
    assert got[0] is not None and got[0].status_code == 429
    assert Fault("reset").status_code is None


def test_retry_after_and_probability_one_default() -> None:
    plan = FaultPlan.parse("create:429@1:retry_after=2.5")
    assert plan.draw("create") == Fault("429", retry_after=2.5)
    assert FaultPlan.parse("download:download_404").draw("download") == Fault("download_404")


def test_any_rules_apply_to_every_endpoint_they_fit() -> None:
    plan = FaultPlan.parse("any:reset")
    for endpoint in ("create", "poll", "upload", "download", "find"):
        assert plan.draw(endpoint) == Fault("reset")
    truncating = FaultPlan.parse("any:truncated")
    assert truncating.draw("download") == Fault("truncated")
    assert truncating.draw("create") is None  # meaningless there, so it does not fire
    with pytest.raises(ValueError, match="endpoint 'any'"):
        plan.draw("any")


def test_first_matching_rule_wins_but_sequences_still_advance() -> None:
    plan = FaultPlan.parse("create:500; create:seq=429,ok")
    assert plan.draw("create") == Fault("500")
    plan = FaultPlan.parse("create:seq=ok,ok,503; create:seq=429,ok")
    assert [plan.draw("create") for _ in range(4)] == [Fault("429"), None, Fault("503"), None]


def test_add_and_clear_at_run_time() -> None:
    plan = FaultPlan.none()
    plan.add("poll:502; poll:500")
    assert plan.draw("poll") == Fault("502")
    plan.clear()
    assert plan.draw("poll") is None
    with pytest.raises(ValueError, match="unknown fault kind"):
        plan.add("poll:999")


def test_fault_plan_is_thread_safe() -> None:
    plan = FaultPlan.parse("create:seq=" + ",".join(["500"] * 300))
    results: list[Fault | None] = []
    lock = threading.Lock()

    def worker() -> None:
        local = [plan.draw("create") for _ in range(100)]
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for fault in results if fault is not None) == 300


# --- counters --------------------------------------------------------------------------


def test_counters_bump_bill_and_snapshot() -> None:
    counters = EmulatorCounters()
    counters.bump("created")
    counters.bump("polls", 3)
    counters.bump_fault("create", "503")
    counters.bump("create:503")
    counters.add_billed(Decimal("0.04"))
    counters.add_billed(Decimal("0.02"))
    snap = counters.snapshot()
    assert snap["created"] == 1 and snap["polls"] == 3
    assert snap["faults"] == {"create:503": 2}
    assert snap["billed_usd"] == Decimal("0.06")
    assert "_lock" not in snap
    snap["faults"]["create:503"] = 99
    assert counters.faults["create:503"] == 2  # a copy
    with pytest.raises(ValueError, match="unknown counter"):
        counters.bump("bogus")
    with pytest.raises(TypeError, match="Decimal"):
        counters.add_billed(0.1)  # type: ignore[arg-type]
    counters.reset()
    assert counters.snapshot()["created"] == 0 and counters.faults == {}


def test_counters_are_thread_safe() -> None:
    counters = EmulatorCounters()

    def worker() -> None:
        for _ in range(2000):
            counters.bump("polls")
            counters.add_billed(Decimal("0.01"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counters.polls == 8000
    assert counters.billed_usd == Decimal("80.00")


# --- images ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("jpg", "JPEG"), ("webp", "WEBP")]
)
@pytest.mark.parametrize(("width", "height"), [(1024, 1024), (1536, 1024), (17, 5), (1, 1)])
def test_render_image_exact_size_and_format(
    fmt: str, pil_format: str, width: int, height: int
) -> None:
    data = render_image("a red fox", width, height, fmt)
    image = Image.open(io.BytesIO(data))
    assert image.format == pil_format
    assert image.size == (width, height)


def test_render_image_transparency() -> None:
    for fmt in ("png", "webp"):
        image = Image.open(io.BytesIO(render_image("x", 64, 64, fmt, transparent=True)))
        assert image.mode == "RGBA"
        low, high = image.getchannel("A").getextrema()
        assert isinstance(low, int) and isinstance(high, int)
        assert low < 32 and high > 224, fmt
        opaque = Image.open(io.BytesIO(render_image("x", 64, 64, fmt)))
        assert "A" not in opaque.getbands()
    jpeg = Image.open(io.BytesIO(render_image("x", 64, 64, "jpeg", transparent=True)))
    assert jpeg.mode == "RGB"


def test_render_image_draws_the_prompt_and_is_deterministic() -> None:
    blank = Image.open(io.BytesIO(render_image("", 256, 256, "png"))).convert("RGB")
    text = Image.open(io.BytesIO(render_image("HELLO WORLD", 256, 256, "png"))).convert("RGB")
    box = (0, 0, 256, 64)  # the text sits near the top-left corner
    diff = [
        abs(a - b) for a, b in zip(blank.crop(box).tobytes(), text.crop(box).tobytes(), strict=True)
    ]
    assert sum(1 for d in diff if d > 60) > 100
    assert render_image("p", 64, 64, "png", seed=3) == render_image("p", 64, 64, "png", seed=3)
    assert render_image("p", 64, 64, "png", seed=3) != render_image("p", 64, 64, "png", seed=4)


def test_render_image_is_fast() -> None:
    render_image("warm up", 64, 64, "png")
    started = time.perf_counter()
    render_image("a red fox in the snow, watercolor", 1024, 1024, "png")
    assert time.perf_counter() - started < 1.0  # tens of ms normally; generous for busy CI


def test_render_image_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gif"):
        render_image("x", 8, 8, "gif")
    with pytest.raises(ValueError, match="outside"):
        render_image("x", 0, 8, "png")


# --- jobs ------------------------------------------------------------------------------


def _job(fate: str = "succeed", **kw: Any) -> EmulatedJob:
    fields: dict[str, Any] = {
        "id": EmulatedJob.new_id(),
        "created_at": 100.0,
        "duration": 10.0,
        "fate": fate,
        "width": 32,
        "height": 24,
        "fmt": "png",
        "count": 2,
        "prompt": "a cat",
        "cost": Decimal("0.04"),
    }
    fields.update(kw)
    return EmulatedJob(**fields)


def test_job_lifecycle_with_injected_clock() -> None:
    job = _job()
    assert [job.state(t) for t in (100.0, 101.9, 102.0, 109.9, 110.0, 1e9)] == [
        "queued",
        "queued",
        "running",
        "running",
        "succeeded",
        "succeeded",
    ]
    assert job.progress(105.0) == pytest.approx(0.5)
    assert job.finishes_at == 110.0
    failing = _job("fail")
    assert failing.state(109.0) == "running" and failing.state(110.0) == "failed"
    stuck = _job("stuck")
    assert stuck.state(1e9) == "running" and stuck.finishes_at is None
    assert stuck.progress(1e9) == 0.99
    instant = _job(duration=0.0)
    assert instant.state(100.0) == "succeeded"


def test_job_book_settles_billing_once_by_time() -> None:
    book, counters = JobBook(), EmulatorCounters()
    ok, bad, stuck = _job(), _job("fail"), _job("stuck")
    for job in (ok, bad, stuck):
        book.add(job)
    book.settle(105.0, counters)
    assert counters.billed_usd == 0 and counters.failed == 0
    book.settle(111.0, counters)
    book.settle(200.0, counters)
    assert counters.billed_usd == Decimal("0.04")
    assert counters.failed == 1
    assert book.all() == [ok, bad, stuck]
    with pytest.raises(ValueError, match="already exists"):
        book.add(ok)


def test_job_book_files_are_rendered_once_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real = render_image

    def counting(prompt: str, width: int, height: int, fmt: str, **kw: Any) -> bytes:
        calls.append((width, height))
        return real(prompt, width, height, fmt, **kw)

    monkeypatch.setattr(jobs_module, "render_image", counting)
    book = JobBook()
    job = _job(fmt="jpg", extra={"client_ref": "abc"})
    book.add(job)
    assert job.fmt == "jpeg"  # normalized
    assert calls == []  # lazy

    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(book.files_for(job))) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 2  # two images, rendered exactly once despite six callers
    assert all(ids == results[0] for ids in results)
    first = book.file(results[0][0])
    assert first is not None
    data, mime = first
    assert mime == "image/jpeg"
    assert Image.open(io.BytesIO(data)).size == (32, 24)
    assert book.file(results[0][1]) != first  # different seeds, different pictures
    assert book.file_name(results[0][0]) == f"{job.id}-0.jpg"
    assert book.find("client_ref", "abc") == [job]
    assert book.find("client_ref", "zzz") == []
    assert book.get(job.id) is job and book.get("nope") is None


def test_job_book_uploads() -> None:
    book = JobBook()
    file_id = book.put_file(b"\x89PNG...", "image/png", "in.png")
    assert book.file(file_id) == (b"\x89PNG...", "image/png")
    assert book.file_name(file_id) == "in.png"
    assert book.file("missing") is None


# --- server and dropped connections ----------------------------------------------------


async def _ok(request: Request) -> Response:
    return JSONResponse({"ok": True, "path": request.url.path})


async def _reset(request: Request) -> Response:
    await drop_connection(request._send)
    return JSONResponse({"never": "seen"})


async def _reset_request(request: Request) -> Response:
    await drop_connection(request)
    return JSONResponse({"never": "seen"})


HANG_ENTERED = threading.Event()


async def _hang(request: Request) -> Response:
    HANG_ENTERED.set()
    await asyncio.sleep(30)
    return JSONResponse({"late": True})


async def _raw_reset(scope: Any, receive: Any, send: Any) -> None:
    # A bare ASGI app: `send` is uvicorn's own bound method here.
    await drop_connection(send)


APP = Starlette(
    routes=[
        Route("/ok", _ok),
        Route("/reset", _reset, methods=["GET", "POST"]),
        Route("/reset-request", _reset_request),
        Route("/hang", _hang),
    ]
)


def _protocols() -> list[str]:
    protocols = ["h11"]
    try:
        import httptools  # noqa: F401
    except ImportError:
        pass
    else:
        protocols.append("httptools")
    return protocols


@pytest.fixture(scope="module", params=_protocols())
def server(request: pytest.FixtureRequest) -> Any:
    with EmulatorServer(APP, http=request.param) as running:
        yield running


def test_server_serves_on_loopback(server: EmulatorServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert server.port > 0
    with httpx.Client(trust_env=False) as client:
        response = client.get(f"{server.url}/ok")
    assert response.json() == {"ok": True, "path": "/ok"}


@pytest.mark.parametrize("path", ["/reset", "/reset-request"])
def test_drop_connection_closes_without_a_response(server: EmulatorServer, path: str) -> None:
    with httpx.Client(trust_env=False) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.get(f"{server.url}{path}")
        # The server is still healthy afterwards.
        assert client.get(f"{server.url}/ok").status_code == 200


async def test_drop_connection_with_async_client(server: EmulatorServer) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.post(f"{server.url}/reset", json={"prompt": "x"})


def test_drop_connection_from_a_bare_asgi_app() -> None:
    with (
        EmulatorServer(_raw_reset) as running,
        httpx.Client(trust_env=False) as client,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        client.get(running.url)


async def test_drop_connection_fallback_without_a_transport() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(ConnectionDropped):
        await drop_connection(send)
    assert sent[0]["type"] == "http.response.start"
    assert (b"content-length", b"1024") in sent[0]["headers"]


def test_server_stops_quickly_even_with_a_hanging_handler() -> None:
    running = EmulatorServer(APP).start()
    url, port = running.url, running.port
    errors: list[BaseException] = []

    def call_hang() -> None:
        try:
            httpx.get(f"{url}/hang", timeout=10, trust_env=False)
        except httpx.HTTPError as exc:
            errors.append(exc)

    HANG_ENTERED.clear()
    client = threading.Thread(target=call_hang)
    client.start()
    assert HANG_ENTERED.wait(5)  # the handler is running when we stop
    started = time.perf_counter()
    running.stop()
    assert time.perf_counter() - started < 3.0
    assert not running.running
    client.join(5)
    assert not client.is_alive()
    assert errors and isinstance(errors[0], httpx.RemoteProtocolError | httpx.ReadError)
    # The port is released: nothing listens there any more.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert not any(t.name == f"emulator-server-{port}" for t in threading.enumerate())


async def test_server_as_async_context_manager() -> None:
    async with EmulatorServer(APP) as running:
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"{running.url}/ok")
        assert response.status_code == 200
    assert not running.running
    with pytest.raises(RuntimeError, match="not started"):
        _ = running.url


def test_server_start_is_fast_and_twice_is_an_error() -> None:
    started = time.perf_counter()
    running = EmulatorServer(APP).start()
    try:
        assert time.perf_counter() - started < 1.0
        with pytest.raises(RuntimeError, match="already started"):
            running.start()
    finally:
        running.stop()
    running.stop()  # idempotent

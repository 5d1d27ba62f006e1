"""The gateway against hostile requests (issue 15): foreign Host and Origin headers, bodies of
the wrong type, oversized or non-Unicode fields, too many bodies at once, half-open
connections, keys in query strings; and `serve` on a port in use (issue 9).

Every refusal is checked to have cost nothing: the emulators count zero paid creates.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from imagerouter.cli import cli
from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.gateway import create_app
from imagerouter.gateway.access_log import ACCESS_LOGGER, redact_uvicorn_access_log
from imagerouter.gateway.bodies import MAX_TEXT_PART_BYTES
from imagerouter.gateway.guard import HostRule, parse_host, same_origin
from imagerouter.gateway.server import bind, server_config
from imagerouter.plugins import Plugins

from .conftest import base_config, deep_merge
from .test_gateway import ServeGateway, png_bytes, serve_gateway

__all__ = ["serve_gateway"]

NO_CREATES = {"runapi": 0, "runflow": 0}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition the test cannot await (the server runs in another thread). The limit
    only stops a broken test; nothing here asserts how long anything took."""
    for _ in range(2000):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- Host, Origin, content types -----------------------------------------------------------


def test_the_drive_by_request_from_the_issue_pays_for_nothing(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway(key="")  # no gateway.api_keys: loopback only, no authentication
    port = port_of(served.url)
    with httpx.Client(base_url=served.url, timeout=10) as http:
        response = http.post(
            "/v1/images/generations",
            content=b'{"prompt": "a lighthouse", "n": 10}',
            headers={"content-type": "text/plain", "origin": "http://evil.example",
                     "host": f"evil.example:{port}"},
        )
    assert response.status_code == 421
    assert response.json()["error"]["code"] == "host_not_allowed"
    assert emulators.created() == NO_CREATES


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        # DNS rebinding: a foreign name, even without Origin or with a matching one.
        ({"host": "evil.example:{port}"}, 421, "host_not_allowed"),
        ({"host": "evil.example:{port}", "origin": "http://evil.example:{port}",
          "content-type": "application/json"}, 421, "host_not_allowed"),
        # The served address, on another port.
        ({"host": "127.0.0.1:1"}, 421, "host_not_allowed"),
        # The right Host, a foreign page.
        ({"origin": "http://evil.example", "content-type": "application/json"}, 403,
         "origin_not_allowed"),
        ({"origin": "null", "content-type": "application/json"}, 403, "origin_not_allowed"),
        # No Origin (curl), but a body type no browser needs a preflight for.
        ({"content-type": "text/plain"}, 415, "invalid_content_type"),
        ({"content-type": "application/x-www-form-urlencoded"}, 415, "invalid_content_type"),
        ({"content-type": "multipart/form-data; boundary=x"}, 415, "invalid_content_type"),
        ({}, 415, "invalid_content_type"),
    ],
)
def test_refused_before_any_paid_call(
    serve_gateway: ServeGateway, emulators: Emulators, headers: dict[str, str], status: int,
    code: str,
) -> None:
    served = serve_gateway(key="")
    port = port_of(served.url)
    sent = {name: value.format(port=port) for name, value in headers.items()}
    with httpx.Client(base_url=served.url, timeout=10) as http:
        response = http.post("/v1/images/generations", content=b'{"prompt": "a fox"}',
                             headers=sent)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert emulators.created() == NO_CREATES


@pytest.mark.parametrize("path", ["/v1/images/jobs", "/callbacks/runflow"])
def test_text_plain_is_refused_on_every_body_route(
    serve_gateway: ServeGateway, emulators: Emulators, path: str
) -> None:
    with serve_gateway().http() as http:
        response = http.post(path, content=b'{"prompt": "a fox"}',
                             headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert emulators.created() == NO_CREATES


def test_same_origin_loopback_names_and_allowed_hosts_pass(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway({"gateway": {"allowed_hosts": ["*.example.com", "img.test:8443"]}})
    port = port_of(served.url)
    with served.http() as http:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}",
                     "api.example.com", f"api.example.com:{port}", "img.test:8443"):
            assert http.get("/v1/models", headers={"host": host}).status_code == 200, host
        for host in ("example.com", "img.test:8000", "evil.example", "a:b:c:d:e:f:g:1x"):
            assert http.get("/v1/models", headers={"host": host}).status_code == 421, host
        same = http.post("/v1/images/generations", json={"prompt": "a fox"},
                         headers={"origin": f"http://127.0.0.1:{port}"})
    assert same.status_code == 200, same.text
    assert "access-control-allow-origin" not in same.headers
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_cors_for_listed_origins_only(serve_gateway: ServeGateway, emulators: Emulators) -> None:
    served = serve_gateway({"gateway": {"cors_origins": ["https://app.example"]}})
    app = "https://app.example"
    with served.http() as http:
        preflight = http.options("/v1/images/generations", headers={
            "origin": app, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, "
                                              "openai-organization, x-stainless-os",
        })
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == app
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"]
        for header in ("authorization", "content-type", "openai-organization",
                       "x-stainless-os"):
            assert header in allowed
        foreign = http.options("/v1/images/generations", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        assert foreign.status_code == 403
        assert "access-control-allow-origin" not in foreign.headers
        odd_header = http.options("/v1/images/generations", headers={
            "origin": app, "access-control-request-method": "POST",
            "access-control-request-headers": "x-forwarded-for"})
        assert odd_header.status_code == 403
        real = http.post("/v1/images/generations", json={"prompt": "a fox"},
                         headers={"origin": app})
        assert real.status_code == 200, real.text
        assert real.headers["access-control-allow-origin"] == app
        assert "x-imagerouter-cost-usd" in real.headers["access-control-expose-headers"]
        assert "Origin" in real.headers["vary"]
        refused = http.post("/v1/images/generations", json={"prompt": "a fox"},
                            headers={"origin": "https://app.example.evil"})
        assert refused.status_code == 403
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_host_and_origin_helpers() -> None:
    assert parse_host("Example.COM:8080") == ("example.com", 8080)
    assert parse_host("[::1]:80") == ("::1", 80)
    assert parse_host("::1") == ("::1", None)
    for bad in ("", "host:", "host:0", "host:99999", "[::1", "[::1]x", ":80"):
        assert parse_host(bad) is None, bad
    wildcard = HostRule.parse("*.example.com")
    assert wildcard.matches("a.example.com", 1) and wildcard.matches("a.b.example.com", None)
    assert not wildcard.matches("example.com", None)
    assert not wildcard.matches("evilexample.com", None)
    assert same_origin("https://img.example.com", ("img.example.com", None))
    assert same_origin("http://127.0.0.1:8000", ("127.0.0.1", 8000))
    assert not same_origin("http://127.0.0.1:8001", ("127.0.0.1", 8000))
    assert not same_origin("null", ("127.0.0.1", 8000))


# -- field caps and Unicode ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": "a fox", "user": "u" * 50_000}, "user", "string_above_max_length"),
        ({"prompt": "a fox", "safety_identifier": "s" * 257}, "safety_identifier",
         "string_above_max_length"),
        ({"prompt": "a fox", "size": "1" * 300}, "size", "string_above_max_length"),
        ({"prompt": "x" * 32_001}, "prompt", "string_above_max_length"),
        ({"prompt": "a fox", "providers": ["runapi"] * 40}, "providers", "invalid_value"),
        ({"prompt": "a fox", "x" * 5000: 1}, "x" * 64 + "...", "unknown_parameter"),
    ],
)
def test_oversized_fields_are_400s_naming_the_field(
    serve_gateway: ServeGateway, emulators: Emulators, body: dict[str, Any], param: str,
    code: str,
) -> None:
    with serve_gateway().http() as http:
        response = http.post("/v1/images/generations", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert len(error["message"]) < 300  # the value is never echoed whole
    assert emulators.created() == NO_CREATES


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "a fox \\ud800"}',  # a lone surrogate, as a JSON escape
        b'{"prompt": "a fox", "user": "\\udfff"}',
        b'{"prompt": "a fox", "\\ud800": 1}',
    ],
)
def test_lone_surrogates_are_400s(
    serve_gateway: ServeGateway, emulators: Emulators, raw: bytes
) -> None:
    with serve_gateway().http() as http:
        response = http.post("/v1/images/generations", content=raw,
                             headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert emulators.created() == NO_CREATES


def test_non_utf8_bodies_and_fields_are_400s(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    image = ("image", ("a.png", png_bytes(), "image/png"))
    with serve_gateway().http() as http:
        json_body = http.post("/v1/images/generations", content=b'{"prompt": "a \xe9t\xe9"}',
                              headers={"content-type": "application/json"})
        utf16 = http.post("/v1/images/generations",
                          content='{"prompt": "a fox"}'.encode("utf-16"),
                          headers={"content-type": "application/json"})
        form = http.post("/v1/images/edits", files=[image, ("prompt", (None, b"caf\xe9"))])
        surrogate_form = http.post("/v1/images/edits",
                                   files=[image, ("prompt", (None, b"x \xed\xa0\x80"))])
        long_field = http.post("/v1/images/edits", files=[
            image, ("user", (None, b"u" * (MAX_TEXT_PART_BYTES + 1)))])
    for response in (json_body, utf16):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"
    for response in (form, surrogate_form):
        assert response.status_code == 400, response.text
        assert (response.json()["error"]["param"],
                response.json()["error"]["code"]) == ("prompt", "invalid_encoding")
    assert long_field.status_code == 400
    assert long_field.json()["error"]["param"] == "user"
    assert emulators.created() == NO_CREATES


def test_a_json_body_is_held_to_one_mib(serve_gateway: ServeGateway) -> None:
    with serve_gateway().http() as http:  # max_body_bytes is 60 MiB: uploads need it
        response = http.post("/v1/images/generations",
                             json={"prompt": "a fox", "user": "u" * (2 * 1024 * 1024)})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "request_too_large"


def test_logs_never_hold_a_fields_full_value(
    serve_gateway: ServeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    user = "user-" + "q" * 251  # 256 characters: accepted
    served = serve_gateway()
    with caplog.at_level(logging.INFO, logger="imagerouter"), served.http() as http:
        response = http.post("/v1/images/generations", json={"prompt": "a fox", "user": user})
    assert response.status_code == 200
    assert "user=user-qqq" in caplog.text  # the line is there...
    assert user not in caplog.text  # ...clipped


# -- bytes held at once --------------------------------------------------------------------


def test_bodies_past_max_inflight_bytes_get_a_503_until_bytes_are_freed(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = serve_gateway({"gateway": {"max_inflight_bytes": 1_000_000}})
    pool = served.gateway.inflight
    port = port_of(served.url)
    # A client that declares 600 kB and sends only the start of it: its bytes are held.
    slow = socket.create_connection(("127.0.0.1", port))
    try:
        slow.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: 600000\r\n\r\n{\"prompt\": \"" % (port, served.key.encode())
        )
        wait_until(lambda: pool.held == 600_000, "the slow body is admitted")
        with served.http() as http:
            declared = http.post("/v1/images/generations",
                                 json={"prompt": "a fox", "user": "u" * 250,
                                       "pad": " " * 500_000})
            chunked = http.post("/v1/images/generations",
                                content=iter([b'{"prompt": "', b"a" * 300_000,
                                              b"a" * 300_000, b'"}']),
                                headers={"content-type": "application/json"})
            small = http.post("/v1/images/generations", json={"prompt": "a fox"})
        for response in (declared, chunked):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "server_overloaded"
            assert response.headers["retry-after"].isdigit()
            assert response.headers["x-should-retry"] == "true"
        assert small.status_code == 200, small.text  # what fits is still served
        assert pool.held == 600_000
    finally:
        slow.close()
    wait_until(lambda: pool.held == 0, "the slow client's bytes are freed")
    with served.http() as http:
        again = http.post("/v1/images/generations",
                          json={"prompt": "a fox",
                                "user": "u" * 200})
    assert again.status_code == 200, again.text
    assert emulators.created() == {"runapi": 2, "runflow": 0}


def test_an_edit_holds_its_share_until_its_job_ends(serve_gateway: ServeGateway) -> None:
    served = serve_gateway()
    with served.http() as http:
        response = http.post("/v1/images/edits", data={"prompt": "a fox"},
                             files=[("image", ("a.png", png_bytes(), "image/png"))])
    assert response.status_code == 200, response.text
    job = served.gateway.jobs.recent(1)[0]
    assert job.done
    assert served.gateway.inflight.held == 0


# -- read deadlines and the access log, on the server `imagerouter serve` runs -------------


class RunningServer:
    def __init__(self, app: Any, config: uvicorn.Config, sock: socket.socket) -> None:
        self.app = app
        self.server = uvicorn.Server(config)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        wait_until(lambda: self.server.started, "the server starts")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def run_server(
    emulators: Emulators, plugins: Plugins, tmp_path: Path
) -> Iterator[Callable[[dict[str, Any]], RunningServer]]:
    started: list[RunningServer] = []

    def start(gateway: dict[str, Any]) -> RunningServer:
        data = deep_merge(base_config(tmp_path), {"gateway": gateway})
        cfg = emulators.configure(load_config(data, known_providers=plugins.providers()))
        app = create_app(cfg, plugins=plugins)
        config = server_config(app, cfg.gateway, log_level="warning", log_config=None)
        running = RunningServer(app, config, bind("127.0.0.1", 0)).__enter__()
        started.append(running)
        return running

    yield start
    for running in started:
        running.__exit__()


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes the connection: True on EOF or reset. The timeout only
    stops a broken test."""
    sock.settimeout(30)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_half_open_connections_are_closed(
    run_server: Callable[[dict[str, Any]], RunningServer], emulators: Emulators
) -> None:
    running = run_server({"header_timeout_s": 0.2, "body_timeout_s": 0.2})
    port = running.port
    silent = socket.create_connection(("127.0.0.1", port))  # sends nothing at all
    half_header = socket.create_connection(("127.0.0.1", port))
    half_header.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0")
    half_body = socket.create_connection(("127.0.0.1", port))
    half_body.sendall(
        b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"" % port
    )
    try:
        for sock in (silent, half_header, half_body):
            assert closed_by_server(sock)
    finally:
        for sock in (silent, half_header, half_body):
            sock.close()
    # The server still serves whole requests, and a slow job is not cut off.
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        response = http.post("/v1/images/generations", json={"prompt": "a fox"})
    assert response.status_code == 200, response.text
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_query_strings_are_redacted_in_the_access_log(
    run_server: Callable[[dict[str, Any]], RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    running = run_server({"api_keys": ["gw-query-key-0123"]})
    with caplog.at_level(logging.INFO), httpx.Client(
        base_url=f"http://127.0.0.1:{running.port}", timeout=10
    ) as http:
        response = http.get("/v1/models?api_key=SECRET-IN-QUERY-42&x=1",
                            headers={"authorization": "Bearer gw-query-key-0123"})
        refused = http.get("/healthz?token=SECRET-IN-QUERY-42",
                           headers={"host": "evil.example"})
    assert (response.status_code, refused.status_code) == (200, 421)
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert any("GET /v1/models?[redacted]" in line and line.endswith(" 200") for line in lines)
    assert any("GET /healthz?[redacted]" in line and line.endswith(" 421") for line in lines)
    # Every server-side line (the test's own httpx client logs its URL, which is its business).
    server_side = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert server_side and not any("SECRET-IN-QUERY-42" in line for line in server_side)


def test_uvicorns_own_access_log_is_redacted_too() -> None:
    redact_uvicorn_access_log()
    logger = logging.getLogger("uvicorn.access")
    record = logger.makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/v1/models?api_key=SECRET-QS", "1.1", 200), None,
    )
    assert all(f.filter(record) for f in logger.filters)
    assert record.getMessage() == '127.0.0.1:5 - "GET /v1/models?[redacted] HTTP/1.1" 200'


# -- `serve` on a port in use (issue 9) ----------------------------------------------------


def test_serve_on_a_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--port", str(port)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "already in use" in lines[0]
    assert "imagerouter gateway on" not in result.output

"""Issue 13's "Done when": a provider outage, a budget and an idempotent retry behave the same
on one process as on three. Every scenario runs twice, against the same kind of emulators:

- `embedded`: one `imagerouter serve` on the defaults (a SQLite ledger file, `shared.url:
  memory`), with libpq's and Redis's usual environment pointed at a closed port, and no socket
  of it ever open to PostgreSQL or Redis;
- `fleet`: three `serve` processes on PostgreSQL (a fresh schema) and Redis (a fresh prefix),
  requests spread over them.

Each scenario states its outcome once and asserts it for both.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.emulation import FaultPlan
from imagerouter.plugins import Plugins

from .conftest import base_config
from .test_fleet_pg_redis import REDIS_URL, _price, _stop
from .test_fleet_pg_redis import prefix as prefix  # the fixture: a fresh prefix
from .test_fleet_serve import _start, _wait_for_port
from .test_stores_ledger import pg_url as pg_url  # the fixture: a fresh schema

PG_PORT = 5432
REDIS_PORT = 6379
# The outage scenario's breaker: ejected after this many consecutive transient failures, for
# longer than the test runs (so no half-open trial reaches the failing backend).
FAILURE_THRESHOLD = 2


@dataclass
class Deployment:
    """What a scenario talks to: the serve processes and their base URLs."""

    mode: str
    processes: list[subprocess.Popen[bytes]]
    bases: list[str]
    logs: list[Path]

    def base(self, i: int) -> str:
        """Request `i` goes to replica `i mod N` (always the one process when embedded)."""
        return self.bases[i % len(self.bases)]

    def log_text(self) -> list[str]:
        return [log.read_text() for log in self.logs]


Deploy = Callable[[dict[str, Any]], Deployment]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _remote_ports(pid: int) -> set[int]:
    """The remote TCP ports of the sockets process `pid` holds open (from /proc)."""
    inodes: set[str] = set()
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture(params=["embedded", "fleet"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def deploy(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deploy]:
    """Starts the deployment `mode` names for a scenario's config (providers, tiers, health,
    budget: everything but where state lives), and stops it afterwards."""
    started: list[Deployment] = []

    def start(data: dict[str, Any]) -> Deployment:
        if mode == "fleet":
            data["ledger"] = {"url": request.getfixturevalue("pg_url")}
            data["shared"] = {"url": REDIS_URL, "prefix": request.getfixturevalue("prefix")}
            replicas = 3
        else:
            replicas = 1
            closed = _closed_port()
            # Whatever would find a server from the environment finds nothing there.
            for var, value in {
                "PGHOST": "127.0.0.1",
                "PGPORT": str(closed),
                "PGHOSTADDR": "127.0.0.1",
                "REDIS_URL": f"redis://127.0.0.1:{closed}/0",
                "REDIS_HOST": "127.0.0.1",
                "REDIS_PORT": str(closed),
            }.items():
                monkeypatch.setenv(var, value)
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(data))
        if mode == "embedded":
            text = config.read_text()
            assert "postgresql://" not in text and "postgres://" not in text, text
            assert "redis://" not in text and "rediss://" not in text, text
            loaded = load_config(data, known_providers=None)
            assert loaded.ledger.url is None and loaded.ledger.enabled
            assert loaded.shared.url == "memory"
        logs = [tmp_path / f"{mode}-{i}.log" for i in range(replicas)]
        processes = [_start(config, log) for log in logs]
        deployment = Deployment(mode, processes, [], logs)
        started.append(deployment)
        deployment.bases = [
            f"http://127.0.0.1:{_wait_for_port(log, process)}"
            for log, process in zip(logs, processes, strict=True)
        ]
        return deployment

    yield start
    try:
        for deployment in started:
            if deployment.bases:  # it started (else the scenario failed already)
                _check_servers(deployment)
    finally:
        for deployment in started:
            _stop(deployment.processes)


def _check_servers(deployment: Deployment) -> None:
    """After a scenario, while its processes still run: the embedded one never held a socket
    to PostgreSQL or Redis; the fleet's replicas hold both (their pools keep connections), so
    the same check on the embedded process could have failed."""
    for process in deployment.processes:
        assert process.poll() is None, deployment.log_text()
        ports = _remote_ports(process.pid)
        if deployment.mode == "embedded":
            assert not ports & {PG_PORT, REDIS_PORT}, ports
        else:
            assert {PG_PORT, REDIS_PORT} <= ports, ports


def _providers(data: dict[str, Any], emulators: Emulators) -> dict[str, Any]:
    for name in ("runapi", "runflow"):
        data["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    return data


# -- 1. an outage --------------------------------------------------------------------------

HealthView = tuple[int, int, str]  # (consecutive failures, up, state)


def _runapi_health(base: str) -> HealthView:
    """What one replica believes of runapi now, from its /metrics. A backend the replica never
    heard of is (0, 1, "healthy")."""
    failures, up, state = 0, 1, "healthy"
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if 'provider="runapi"' not in line:
            continue
        if line.startswith("imagerouter_backend_consecutive_failures{"):
            failures = int(line.rsplit(" ", 1)[1])
        elif line.startswith("imagerouter_backend_up{"):
            up = int(line.rsplit(" ", 1)[1])
        elif line.startswith("imagerouter_backend_state{") and line.endswith(" 1"):
            state = line.split('state="', 1)[1].split('"', 1)[0]
    return failures, up, state


@dataclass(frozen=True)
class Outage:
    """How runapi fails every create, and what the health policy makes of it."""

    faults: str
    fault_name: str  # as the emulator counts it
    bound: int  # creates the failing backend gets before no replica routes to it
    cooldown: bool  # a rate limit (a cooldown at once), not a breaker's count

    def view_after(self, failed: int) -> HealthView:
        """Every replica's view of runapi once `failed` attempts on it failed."""
        if self.cooldown:
            return (0, 0, "rate_limited")
        if failed < self.bound:
            return (failed, 1, "healthy")
        return (failed, 0, "ejected")


OUTAGES = {
    # 503s count toward the breaker: ejected after FAILURE_THRESHOLD in a row.
    "503": Outage("create:503@1", "create:503", FAILURE_THRESHOLD, cooldown=False),
    # A 429 with Retry-After cools the backend down at once (for max_rate_limit_s, 300 s).
    "429": Outage("create:429@1:retry_after=600", "create:429", 1, cooldown=True),
}


@pytest.mark.parametrize("outage", list(OUTAGES))
def test_an_outage_is_avoided_by_every_replica_after_the_same_number_of_creates(
    deploy: Deploy, emulators: Emulators, tmp_path: Path, outage: str
) -> None:
    kind = OUTAGES[outage]
    data = _providers(base_config(tmp_path), emulators)
    data.update(
        health={"failure_threshold": FAILURE_THRESHOLD, "base_ejection_s": 600,
                "max_ejection_s": 600},
        routing={"strategy": "priority"},
        tiers={
            "t": [
                {"provider": "runapi", "model": "gpt-image-2"},
                {"provider": "runflow", "model": "gpt-image-2"},
            ]
        },
        default_tier="t",
    )
    emulators.apps["runapi"].options.faults = FaultPlan.parse(kind.faults)  # every create
    deployment = deploy(data)
    failing = emulators.apps["runapi"].counters
    requests = 6  # two rounds over three replicas

    seen: list[int] = []  # creates the failing backend got during each request
    for i in range(requests):  # one after another: the count is exact
        before = failing.snapshot()["faults"].get(kind.fault_name, 0)
        answer = httpx.post(f"{deployment.base(i)}/v1/images/generations",
                            json={"prompt": f"a fox {i}"}, timeout=60)
        assert answer.status_code == 200, (answer.text, deployment.log_text())
        assert answer.headers["x-imagerouter-provider"] == "runflow"
        seen.append(failing.snapshot()["faults"].get(kind.fault_name, 0) - before)
        # One process knows a verdict the moment it is made. A replica pushes its verdicts
        # to Redis in the background and the others hear them moments later
        # (stores/shared_mirror.py), so the next request waits until every replica agrees:
        # the count below then does not depend on how fast that went.
        expected = [kind.view_after(min(i + 1, kind.bound))] * len(deployment.bases)
        deadline = time.monotonic() + 30
        while (views := [_runapi_health(base) for base in deployment.bases]) != expected:
            assert time.monotonic() < deadline, (i, views, deployment.log_text())

    # The first `bound` requests each meet the outage once and fail over (for 503s in the
    # fleet they land on replicas 0 and 1: the breaker opens on a count two replicas kept).
    # Every later request, on every replica (replica 2 included), goes straight to runflow.
    assert seen == [1] * kind.bound + [0] * (requests - kind.bound), seen
    assert failing.snapshot()["faults"] == {kind.fault_name: kind.bound}
    assert emulators.created() == {"runapi": 0, "runflow": requests}  # every request served


# -- 2. a budget ---------------------------------------------------------------------------

K = 3  # requests the budget fits


def _one_backend(data: dict[str, Any]) -> dict[str, Any]:
    """One backend, so a reservation is exactly what a job costs."""
    data["providers"]["runflow"]["poll_deadline"] = 30
    data.update(tiers={"t": [{"provider": "runflow", "model": "gpt-image-2"}]},
                default_tier="t")
    return data


@pytest.mark.parametrize("scope", ["global", "key"])
def test_a_daily_budget_for_k_serves_k_of_3k_concurrent_requests(
    deploy: Deploy, emulators: Emulators, plugins: Plugins, tmp_path: Path, scope: str
) -> None:
    data = _one_backend(_providers(base_config(tmp_path), emulators))
    price = _price(data, plugins)  # quoted on the embedded ledger file: no paid call
    headers: dict[str, str] = {}
    if scope == "global":
        data["budget"] = {"daily_usd": str(price * K)}
        code = "budget_exceeded"  # the gateway's code for the global budget
    else:
        data["gateway"] = {"api_keys": [{"key": "sk-parity", "name": "team-a",
                                         "daily_usd": str(price * K)}]}
        headers["authorization"] = "Bearer sk-parity"
        code = "insufficient_quota"  # OpenAI's own code, for a key's budget
    deployment = deploy(data)

    def call(i: int) -> tuple[int, dict[str, Any]]:
        with httpx.Client(base_url=deployment.base(i), timeout=60, headers=headers) as http:
            answer = http.post("/v1/images/generations", json={"prompt": f"cat {i}"})
            return answer.status_code, answer.json()

    with ThreadPoolExecutor(3 * K) as pool:
        answers = list(pool.map(call, range(3 * K)))
    codes = [status for status, _ in answers]
    assert codes.count(200) == K, (answers, deployment.log_text())
    refused = [body["error"] for status, body in answers if status != 200]
    assert len(refused) == 2 * K and all(
        error["type"] == "insufficient_quota" and error["code"] == code for error in refused
    ), refused
    counters = emulators.apps["runflow"].counters.snapshot()
    assert emulators.created() == {"runapi": 0, "runflow": K}  # paid creates = served
    assert counters["billed_usd"] == price * K


# -- 3. an idempotent retry ----------------------------------------------------------------


class HeldClock:
    """The emulator's clock, frozen while held: a job created then stays queued, so the first
    call is certainly still running while its repeats arrive. Released, it is real time again
    (and the held job is long done)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: float | None = None

    def hold(self) -> None:
        with self._lock:
            self._held = time.monotonic()

    def release(self) -> None:
        with self._lock:
            self._held = None

    def __call__(self) -> float:
        with self._lock:
            return time.monotonic() if self._held is None else self._held


def _job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job once it ended (a real round trip per look, no sleep)."""
    deadline = time.monotonic() + 60
    while True:
        body: dict[str, Any] = http.get(f"/v1/images/jobs/{job_id}").json()
        if body["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return body
        http.get("/healthz")


def test_an_idempotent_retry_returns_the_first_answer_and_pays_once(
    deploy: Deploy, emulators: Emulators, tmp_path: Path
) -> None:
    data = _one_backend(_providers(base_config(tmp_path), emulators))
    deployment = deploy(data)
    clock = HeldClock()
    emulators.apps["runflow"].app.state.emulator.clock = clock
    body = {"prompt": "a fox", "response_format": "b64_json"}
    key = {"Idempotency-Key": "parity-1"}
    clients = [httpx.Client(base_url=deployment.base(i), timeout=60, headers=key)
               for i in range(3)]
    try:
        clock.hold()
        first = clients[0].post("/v1/images/jobs", json=body)
        assert first.status_code == 202, (first.text, deployment.log_text())
        deadline = time.monotonic() + 30
        while emulators.created()["runflow"] < 1:  # the first call's create was accepted
            assert time.monotonic() < deadline, deployment.log_text()
            clients[0].get("/healthz")
        # Its job cannot finish while the clock is held: the repeats (to replicas 1 and 2 in
        # the fleet, to the same process when embedded) arrive while it runs.
        repeats = [client.post("/v1/images/jobs", json=body) for client in clients[1:]]
        assert [r.status_code for r in repeats] == [202, 202], [r.text for r in repeats]
        for client, repeat in zip(clients[1:], repeats, strict=True):
            seen = client.get(f"/v1/images/jobs/{repeat.json()['id']}").json()
            assert seen["status"] == "running", seen  # waiting on the first call's claim
        assert emulators.created()["runflow"] == 1
        clock.release()

        jobs = [_job(clients[0], first.json()["id"])] + [
            _job(client, repeat.json()["id"])
            for client, repeat in zip(clients[1:], repeats, strict=True)
        ]
        assert [job["status"] for job in jobs] == ["succeeded"] * 3, jobs
        images = [[item["b64_json"] for item in job["result"]["data"]] for job in jobs]
        assert images[1] == images[0] and images[2] == images[0]
        # The same request: its id in each answer's result. (Not the job summary's
        # `request_id`: a repeat's is null, on one process and on three alike, since
        # gateway/jobs.py takes it from routing events and a repeat routes nothing.)
        request_ids = {job["result"]["imagerouter"]["request_id"] for job in jobs}
        assert request_ids == {jobs[0]["request_id"]} and request_ids != {None}, jobs

        # Once it finished, a synchronous repeat elsewhere gets the same bytes, at once.
        again = clients[2].post("/v1/images/generations", json=body)
        assert again.status_code == 200, again.text
        assert [item["b64_json"] for item in again.json()["data"]] == images[0]
        assert again.json()["imagerouter"]["request_id"] == jobs[0]["request_id"]
        assert base64.b64decode(images[0][0])[:4] == b"\x89PNG"

        # The key with another request is refused before anything is sent, wherever it lands.
        other = clients[1].post("/v1/images/generations", json={**body, "prompt": "a hen"})
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "idempotency_conflict"
    finally:
        clock.release()
        for client in clients:
            client.close()
    counters = emulators.apps["runflow"].counters.snapshot()
    assert emulators.created() == {"runapi": 0, "runflow": 1}  # paid once, anywhere
    assert counters["replayed"] == 0 and counters["billed_usd"] > Decimal(0)

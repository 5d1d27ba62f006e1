"""The base every provider emulator stands on: shared state, auth, fault answers, the app.

An emulator plugin supplies only its routes and response shapes. What is the same for every
provider lives here: the options, the price table the emulator bills from, the counters, the
job book (jobs, their rendered files, uploads), an injectable clock (tests move time by hand),
seeded latencies, Bearer auth, and the answer to the faults every endpoint treats alike
(a status, a dropped connection, a hang, a garbled body). Faults that strike after a job is
created are answered by `answer_after_create` once the route has stored the job, and
`fate_of` turns `task_failed` / `task_stuck` into the job's fate.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..pricing import PriceTable
from .counters import EmulatorCounters
from .faults import Fault
from .jobs import JobBook, JobFate
from .options import EmulatorApp, EmulatorOptions
from .server import drop_connection

__all__ = [
    "EmulatorState",
    "answer_after_create",
    "answer_common_fault",
    "emulator_app",
    "fate_of",
    "route_table",
    "state_of",
]

# Create faults that make a job which then fails, or never finishes.
_FATES: dict[str, JobFate] = {"task_failed": "fail", "task_stuck": "stuck"}

# Where `emulator_app` keeps the state on the starlette app (`app.state.emulator`).
_STATE_ATTR = "emulator"


@dataclass
class EmulatorState:
    """Everything an emulator's routes share. Subclass it for a provider's own records.
    Locks guard what uvicorn's thread and a test's thread both touch."""

    options: EmulatorOptions
    prices: PriceTable
    counters: EmulatorCounters = field(default_factory=EmulatorCounters)
    book: JobBook = field(default_factory=JobBook)
    # Seconds, monotonic: tests inject a clock they move instead of sleeping.
    clock: Callable[[], float] = time.monotonic
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._rng = self.options.make_rng()
        self._rng_lock = threading.Lock()

    def now(self) -> float:
        """The emulator's clock."""
        return self.clock()

    def settle(self) -> float:
        """Bill every job that finished by now (billing follows time, not polls); returns
        the time it settled at."""
        now = self.clock()
        self.book.settle(now, self.counters)
        return now

    def sample_latency(self, operation: str) -> float:
        """How long a new job of `operation` takes, from the seeded latency model."""
        with self._rng_lock:
            return self.options.latency_for(operation).sample(self._rng)

    def authorized(self, request: Request) -> bool:
        """Whether the request carries `Authorization: Bearer <options.api_key>`."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self.options.api_key

    def draw(self, endpoint: str, *, count: bool = False) -> Fault | None:
        """The fault (if any) for this call to `endpoint`; `count=True` counts it now (else
        the route counts it when it acts on it)."""
        fault = self.options.faults.draw(endpoint)
        if fault is not None and count:
            self.counters.bump_fault(endpoint, fault.kind)
        return fault


async def answer_common_fault(
    state: EmulatorState,
    request: Request,
    endpoint: str,
    fault: Fault | None,
    *,
    status_response: Callable[[Fault], Response],
    malformed_response: Callable[[], Response] | None = None,
    hang: bool = True,
    count: bool = True,
) -> Response | None:
    """Answer the faults every endpoint treats alike: a status code (in the provider's error
    shape, from `status_response`), a reset (the connection is dropped), a garbled body (when
    `malformed_response` is given) and a hang (`hang=False` leaves it to the route, e.g. a
    create that makes the job first). Returns None when the call should go on."""
    if fault is None:
        return None
    handled = (
        fault.status_code is not None
        or fault.kind == "reset"
        or (fault.kind == "malformed" and malformed_response is not None)
        or (fault.kind == "hang" and hang)
    )
    if handled and count:
        state.counters.bump_fault(endpoint, fault.kind)
    if fault.status_code is not None:
        return status_response(fault)
    if fault.kind == "reset":
        await drop_connection(request)
        return Response(status_code=500)  # discarded: the connection is gone
    if fault.kind == "malformed" and malformed_response is not None:
        return malformed_response()
    if fault.kind == "hang" and hang:
        await asyncio.sleep(state.options.hang_seconds)
    return None


def fate_of(fault: Fault | None) -> JobFate:
    """The fate of a job created under `fault`: `task_failed` fails, `task_stuck` never
    finishes, anything else succeeds."""
    return _FATES.get(fault.kind if fault is not None else "", "succeed")


async def answer_after_create(
    state: EmulatorState,
    request: Request,
    fault: Fault | None,
    *,
    error_response: Callable[[int, str], Response],
    malformed_response: Callable[[], Response],
    count: bool = True,
) -> Response | None:
    """The create faults that strike after the job exists (and is billed when it finishes):
    the connection drops after the request was read (`reset_after_send`), a 500 although the
    job was made (`created_500`), a garbled 2xx (`malformed`), or a slow answer (`hang`,
    then None). None: answer the create normally."""
    kind = fault.kind if fault is not None else None
    if kind is None:
        return None
    if count:
        state.counters.bump_fault("create", kind)
    if kind == "reset_after_send":
        await drop_connection(request)
        return Response(status_code=500)  # discarded: the connection is gone
    if kind == "hang":
        await asyncio.sleep(state.options.hang_seconds)
    if kind == "created_500":
        return error_response(500, "Internal server error (emulated fault)")
    if kind == "malformed":
        return malformed_response()
    return None


def route_table(*entries: tuple[str, Callable[[Request], Awaitable[Response]]]) -> list[Route]:
    """Routes from `("METHOD /path", endpoint)` pairs: a provider's API as one table."""
    routes = []
    for spec, endpoint in entries:
        method, _, path = spec.partition(" ")
        routes.append(Route(path.strip(), endpoint, methods=[method.strip().upper()]))
    return routes


def emulator_app(
    provider: str,
    state: EmulatorState,
    routes: Sequence[BaseRoute],
    *,
    middleware: Sequence[Middleware] = (),
) -> EmulatorApp:
    """The starlette app serving `routes`, with `state` kept at `app.state.emulator`."""
    app = Starlette(routes=list(routes), middleware=list(middleware))
    setattr(app.state, _STATE_ATTR, state)
    return EmulatorApp(provider=provider, app=app, options=state.options, counters=state.counters)


def state_of(emulator: EmulatorApp | Any) -> EmulatorState:
    """The state behind an emulator built with `emulator_app` (tests inspect its jobs)."""
    app = emulator.app if isinstance(emulator, EmulatorApp) else emulator
    state = getattr(app.state, _STATE_ATTR)
    assert isinstance(state, EmulatorState)
    return state

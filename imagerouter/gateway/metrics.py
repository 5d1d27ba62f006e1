"""`GET /metrics`: Prometheus text exposition (format 0.0.4), written by hand.

Counters come from the router's own events for gateway jobs (attempts, results, spend) and
from the gateway (HTTP requests, callbacks); gauges are read at scrape time (backend health,
jobs by status). Everything is touched from the server's event loop only, so no locks.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from ..events import AttemptEvent, ResultEvent
from ..health_store import BackendState

if TYPE_CHECKING:
    from ..health import BackendStats

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, math.inf)

Labels = tuple[tuple[str, str], ...]


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1


class Metrics:
    """What the gateway counts."""

    def __init__(self) -> None:
        self.http: Counter[Labels] = Counter()
        self.requests: Counter[Labels] = Counter()
        self.request_failures: Counter[Labels] = Counter()
        self.attempts: Counter[Labels] = Counter()
        self.attempt_failures: Counter[Labels] = Counter()
        self.spend: defaultdict[Labels, Decimal] = defaultdict(Decimal)
        self.billed: defaultdict[Labels, Decimal] = defaultdict(Decimal)
        self.images: Counter[Labels] = Counter()
        self.callbacks: Counter[Labels] = Counter()
        self.latency: dict[Labels, _Histogram] = {}

    # -- recording ------------------------------------------------------------------------

    def http_request(self, route: str, method: str, status: int) -> None:
        self.http[_labels(route=route, method=method, status=str(status))] += 1

    def callback(self, provider: str, result: str) -> None:
        self.callbacks[_labels(provider=provider, result=result)] += 1

    def event(self, event: AttemptEvent | ResultEvent) -> None:
        if isinstance(event, AttemptEvent):
            self._attempt(event)
        else:
            self._result(event)

    def _attempt(self, event: AttemptEvent) -> None:
        backend = _labels(provider=event.provider, model=event.model)
        self.attempts[_labels(provider=event.provider, model=event.model,
                              outcome=event.outcome)] += 1
        if event.error_type:
            self.attempt_failures[_labels(provider=event.provider,
                                          error_type=event.error_type)] += 1
        if event.quoted_usd:
            self.spend[backend] += event.quoted_usd
        if event.billed_usd is not None:
            self.billed[backend] += event.billed_usd

    def _result(self, event: ResultEvent) -> None:
        provider, model = event.provider or "none", event.model or "none"
        outcome = "served" if event.ok else "failed"
        self.requests[_labels(provider=provider, model=model, outcome=outcome)] += 1
        if not event.ok:
            self.request_failures[_labels(error_type=event.error_type or "unknown")] += 1
        if event.images:
            self.images[_labels(provider=provider, model=model)] += event.images
        if event.elapsed_s is not None:
            key = _labels(provider=provider, outcome=outcome)
            self.latency.setdefault(key, _Histogram(LATENCY_BUCKETS)).observe(event.elapsed_s)

    # -- exposition -----------------------------------------------------------------------

    def render(self, health: Sequence[BackendStats], jobs: Mapping[str, int]) -> str:
        out: list[str] = []
        _family(out, "imagerouter_http_requests_total", "counter",
                "Gateway HTTP requests by route, method and status.", self.http.items())
        _family(out, "imagerouter_requests_total", "counter",
                "Image requests (logical, after failover) by provider, model and outcome.",
                self.requests.items())
        _family(out, "imagerouter_request_failures_total", "counter",
                "Image requests that failed, by the error that ended them.",
                self.request_failures.items())
        _family(out, "imagerouter_attempts_total", "counter",
                "Attempts at a backend by provider, model and outcome.", self.attempts.items())
        _family(out, "imagerouter_attempt_failures_total", "counter",
                "Failed attempts by provider and error type.", self.attempt_failures.items())
        _family(out, "imagerouter_spend_usd_total", "counter",
                "Quoted cost of what was delivered or possibly billed, USD.", self.spend.items())
        _family(out, "imagerouter_billed_usd_total", "counter",
                "Cost the providers reported, USD (where they report it).", self.billed.items())
        _family(out, "imagerouter_images_total", "counter",
                "Images delivered to disk.", self.images.items())
        _family(out, "imagerouter_callbacks_total", "counter",
                "Provider callbacks by result (nudged, not_polling, duplicate, rejected).",
                self.callbacks.items())
        self._render_latency(out)
        _family(out, "imagerouter_jobs", "gauge", "Gateway jobs held in memory, by status.",
                ((_labels(status=status), count) for status, count in sorted(jobs.items())))
        self._render_health(out, health)
        return "\n".join(out) + "\n"

    def _render_latency(self, out: list[str]) -> None:
        name = "imagerouter_request_duration_seconds"
        out.append(f"# HELP {name} Time from request to images on disk (or failure).")
        out.append(f"# TYPE {name} histogram")
        for labels, histogram in sorted(self.latency.items()):
            # observe() counts every bucket a value fits in, so the counts are cumulative.
            for bound, count in zip(histogram.buckets, histogram.counts, strict=True):
                le = "+Inf" if math.isinf(bound) else f"{bound:g}"
                out.append(f"{name}_bucket{_text((*labels, ('le', le)))} {count}")
            out.append(f"{name}_sum{_text(labels)} {histogram.sum:.6f}")
            out.append(f"{name}_count{_text(labels)} {histogram.count}")

    @staticmethod
    def _render_health(out: list[str], health: Sequence[BackendStats]) -> None:
        up: list[tuple[Labels, int]] = []
        states: list[tuple[Labels, int]] = []
        failures: list[tuple[Labels, int]] = []
        for stats in health:
            provider, model, operation = stats.key
            backend = _labels(provider=provider, model=model, operation=operation)
            up.append((backend, int(stats.available)))
            failures.append((backend, stats.consecutive_failures))
            for state in BackendState:
                states.append(((*backend, ("state", state.value)), int(stats.state == state)))
        _family(out, "imagerouter_backend_up", "gauge",
                "1 when the backend may be routed to now.", up)
        _family(out, "imagerouter_backend_state", "gauge",
                "The backend's health state (1 for the current one).", states)
        _family(out, "imagerouter_backend_consecutive_failures", "gauge",
                "Consecutive failures of the backend.", failures)


def _labels(**labels: str) -> Labels:
    return tuple(labels.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _text(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}"


def _family(
    out: list[str],
    name: str,
    kind: str,
    help_text: str,
    samples: Iterable[tuple[Labels, int | Decimal]],
) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in sorted(samples, key=lambda item: item[0]):
        shown = format(value, "f") if isinstance(value, Decimal) else str(value)
        out.append(f"{name}{_text(labels)} {shown}")

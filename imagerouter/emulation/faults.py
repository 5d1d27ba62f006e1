"""Fault injection for the emulators: which calls fail, how, by probability or by script.

A plan is a list of rules. Each rule names an endpoint (or `any`) and either a fault kind with
a probability (`create:503@0.3`) or a scripted sequence (`create:seq=429,ok,ok`). `draw()`
decides for one call. The emulators call it from uvicorn's thread while tests add rules from
theirs, so every method takes the plan's lock.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import EmulationSpecError

__all__ = ["ENDPOINTS", "FAULT_KINDS", "STATUS_FAULTS", "Fault", "FaultPlan"]

STATUS_FAULTS = frozenset({"500", "502", "503", "429", "402", "401", "403", "422"})
FAULT_KINDS = frozenset(
    STATUS_FAULTS
    | {
        "reset",
        "reset_after_send",
        "hang",
        "created_500",
        "malformed",
        "task_failed",
        "task_stuck",
        "download_404",
        "truncated",
    }
)
ENDPOINTS = frozenset({"create", "poll", "upload", "download", "find", "any"})

# Kinds that only mean something on some endpoints. An explicit rule elsewhere is an error;
# an `any` rule simply does not fire there. Uploads also create something (a stored file), so
# the "created, then the answer is lost" kinds apply to them too.
_ONLY_ON: dict[str, frozenset[str]] = {
    "reset_after_send": frozenset({"create", "upload"}),
    "created_500": frozenset({"create", "upload"}),
    "task_failed": frozenset({"create"}),
    "task_stuck": frozenset({"create"}),
    "download_404": frozenset({"download"}),
    "truncated": frozenset({"download"}),
}
_OK = "ok"
_EXAMPLES = "e.g. 'create:503@0.3', 'create:429@1:retry_after=2', 'create:seq=429,ok'"


def _spec_error(message: str) -> EmulationSpecError:
    return EmulationSpecError("faults", message)


@dataclass(frozen=True)
class Fault:
    """One injected fault. `retry_after` (seconds) is sent as Retry-After on a 429."""

    kind: str
    retry_after: float | None = None

    @property
    def status_code(self) -> int | None:
        """The HTTP status for a plain status fault (`"503"` -> 503), else None."""
        return int(self.kind) if self.kind in STATUS_FAULTS else None


@dataclass
class _Rule:
    endpoint: str
    probability: float
    fault: Fault | None  # probability rule
    sequence: list[Fault | None] | None  # scripted rule; None entries are "ok"
    calls: int = 0
    text: str = ""

    def applies_to(self, endpoint: str) -> bool:
        return self.endpoint in (endpoint, "any")


def _applicable(fault: Fault | None, endpoint: str) -> bool:
    if fault is None:
        return True
    allowed = _ONLY_ON.get(fault.kind)
    return allowed is None or endpoint in allowed


def _parse_kind(kind: str, endpoint: str, rule: str) -> str:
    kind = kind.strip().lower()
    if kind not in FAULT_KINDS:
        raise _spec_error(
            f"fault rule {rule!r}: unknown fault kind {kind!r}; "
            f"known: {', '.join(sorted(FAULT_KINDS))}"
        )
    allowed = _ONLY_ON.get(kind)
    if allowed is not None and endpoint != "any" and endpoint not in allowed:
        raise _spec_error(
            f"fault rule {rule!r}: {kind!r} only applies to {' or '.join(sorted(allowed))}, "
            f"not {endpoint!r}"
        )
    return kind


def _parse_rule(text: str) -> _Rule:
    rule = text.strip()
    endpoint, sep, rest = rule.partition(":")
    endpoint = endpoint.strip().lower()
    if not sep or not rest.strip():
        raise _spec_error(
            f"fault rule {rule!r}: expected 'endpoint:kind[@probability]', {_EXAMPLES}"
        )
    if endpoint not in ENDPOINTS:
        raise _spec_error(
            f"fault rule {rule!r}: unknown endpoint {endpoint!r}; "
            f"known: {', '.join(sorted(ENDPOINTS))}"
        )
    head, *options = rest.split(":")
    retry_after: float | None = None
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip().lower()
        if key != "retry_after" or not eq:
            raise _spec_error(
                f"fault rule {rule!r}: unknown option {option!r}; the only option is "
                "retry_after=SECONDS"
            )
        try:
            retry_after = float(value)
        except ValueError:
            raise _spec_error(
                f"fault rule {rule!r}: retry_after {value!r} is not a number"
            ) from None
        if retry_after < 0:
            raise _spec_error(f"fault rule {rule!r}: retry_after must not be negative")

    head = head.strip()
    if head.lower().startswith("seq="):
        steps = [step.strip() for step in head[4:].split(",")]
        if not steps or any(not step for step in steps):
            raise _spec_error(f"fault rule {rule!r}: empty step in the sequence")
        sequence: list[Fault | None] = []
        for step in steps:
            if step.lower() == _OK:
                sequence.append(None)
            else:
                sequence.append(Fault(_parse_kind(step, endpoint, rule), retry_after))
        return _Rule(endpoint, 1.0, None, sequence, text=rule)

    kind, at, prob_text = head.partition("@")
    probability = 1.0
    if at:
        try:
            probability = float(prob_text)
        except ValueError:
            raise _spec_error(
                f"fault rule {rule!r}: probability {prob_text!r} is not a number"
            ) from None
        if not 0.0 <= probability <= 1.0:
            raise _spec_error(f"fault rule {rule!r}: probability must be between 0 and 1")
    if kind.strip().lower() == _OK:
        raise _spec_error(f"fault rule {rule!r}: 'ok' is only meaningful inside seq=...")
    fault = Fault(_parse_kind(kind, endpoint, rule), retry_after)
    return _Rule(endpoint, probability, fault, None, text=rule)


def _split(spec: str | Sequence[str] | None) -> list[str]:
    if spec is None:
        return []
    parts = spec.split(";") if isinstance(spec, str) else list(spec)
    return [part.strip() for part in parts if part.strip()]


class FaultPlan:
    """Which faults an emulator injects, per endpoint, by probability or as a scripted sequence.

    Rules are checked in the order given; the first that fires wins. Every matching rule still
    counts the call (sequences advance, probabilities draw), so a script like `seq=429,ok`
    always refers to the 1st, 2nd, ... call of its endpoint. Thread-safe.
    """

    def __init__(self, rules: Sequence[str] = (), *, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rules: list[_Rule] = [_parse_rule(rule) for rule in rules]

    @classmethod
    def parse(cls, spec: str | Sequence[str] | None, *, seed: int | None = None) -> FaultPlan:
        """Rules separated by ';' (or a list of them); None or "" means no faults."""
        return cls(_split(spec), seed=seed)

    @classmethod
    def none(cls) -> FaultPlan:
        return cls()

    def add(self, rule: str) -> None:
        """Add one or more rules (';'-separated) at run time."""
        parsed = [_parse_rule(part) for part in _split(rule)]
        with self._lock:
            self._rules.extend(parsed)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[str]:
        """The rules as written, in order."""
        with self._lock:
            return [rule.text for rule in self._rules]

    def draw(self, endpoint: str) -> Fault | None:
        """Decide whether this call to `endpoint` fails, and how."""
        if endpoint not in ENDPOINTS or endpoint == "any":
            raise ValueError(
                f"endpoint {endpoint!r} is not one of create, poll, upload, download, find"
            )
        chosen: Fault | None = None
        with self._lock:
            for rule in self._rules:
                if not rule.applies_to(endpoint):
                    continue
                if rule.sequence is not None:
                    index = rule.calls
                    rule.calls += 1
                    fault = rule.sequence[index] if index < len(rule.sequence) else None
                else:
                    hit = self._rng.random() < rule.probability
                    fault = rule.fault if hit else None
                if chosen is None and fault is not None and _applicable(fault, endpoint):
                    chosen = fault
        return chosen

    def __repr__(self) -> str:
        return f"FaultPlan({'; '.join(self.rules)!r})"

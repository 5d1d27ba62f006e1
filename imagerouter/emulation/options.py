"""How an emulator is configured (`EmulatorOptions`); what a plugin hands back (`EmulatorApp`)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from .counters import EmulatorCounters
from .faults import FaultPlan
from .latency import LatencyModel

__all__ = ["DEFAULT_LATENCY", "EmulatorApp", "EmulatorOptions"]

DEFAULT_LATENCY = LatencyModel("fixed", 0.05)


@dataclass
class EmulatorOptions:
    """Knobs shared by every provider emulator."""

    api_key: str = "emulator-key"
    latency: LatencyModel = DEFAULT_LATENCY
    edit_latency: LatencyModel | None = None  # None -> same as latency
    faults: FaultPlan = field(default_factory=FaultPlan.none)
    seed: int | None = None
    hang_seconds: float = 30.0
    max_upload_bytes: int = 50 * 1024 * 1024
    url_ttl_seconds: float = 7 * 24 * 3600

    def latency_for(self, operation: str) -> LatencyModel:
        """The latency model for "generate" or "edit"."""
        if operation == "edit" and self.edit_latency is not None:
            return self.edit_latency
        return self.latency

    def make_rng(self) -> random.Random:
        """A generator seeded from `seed` (unseeded when None), for job latencies."""
        return random.Random(self.seed)


@dataclass
class EmulatorApp:
    """An emulator ready to serve: the ASGI app plus what tests inspect."""

    provider: str
    app: Any  # the ASGI app (starlette.applications.Starlette)
    options: EmulatorOptions
    counters: EmulatorCounters

"""Shared pieces of the provider emulators: faults, latency, placeholder images, jobs, serving.

Each provider plugin ships a starlette emulator of its own HTTP API on `EmulatorState` and
`emulator_app` (base.py), adding only its routes and response shapes, so every emulator
injects faults, authenticates, bills and serves files alike, and tests drive them the same way.
"""

from __future__ import annotations

from .base import (
    EmulatorState,
    answer_after_create,
    answer_common_fault,
    emulator_app,
    fate_of,
    route_table,
    state_of,
)
from .counters import EmulatorCounters
from .errors import EmulationSpecError
from .faults import ENDPOINTS, FAULT_KINDS, STATUS_FAULTS, Fault, FaultPlan
from .images import IMAGE_FORMATS, MIME_TYPES, normalize_format, render_image
from .jobs import EmulatedJob, JobBook, JobFate, JobState
from .latency import LatencyModel
from .options import EmulatorApp, EmulatorOptions
from .server import ConnectionDropped, EmulatorServer, drop_connection

__all__ = [
    "ENDPOINTS",
    "FAULT_KINDS",
    "IMAGE_FORMATS",
    "MIME_TYPES",
    "STATUS_FAULTS",
    "ConnectionDropped",
    "EmulatedJob",
    "EmulationSpecError",
    "EmulatorApp",
    "EmulatorCounters",
    "EmulatorOptions",
    "EmulatorServer",
    "EmulatorState",
    "Fault",
    "FaultPlan",
    "JobBook",
    "JobFate",
    "JobState",
    "LatencyModel",
    "answer_after_create",
    "answer_common_fault",
    "drop_connection",
    "emulator_app",
    "fate_of",
    "normalize_format",
    "render_image",
    "route_table",
    "state_of",
]

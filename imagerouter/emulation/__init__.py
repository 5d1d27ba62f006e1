"""Shared pieces of the provider emulators: faults, latency, placeholder images, jobs, serving.

Each provider plugin ships a starlette emulator of its own HTTP API built from these parts, so
both emulators inject faults, bill and serve files alike, and tests drive them the same way.
"""

from __future__ import annotations

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
    "Fault",
    "FaultPlan",
    "JobBook",
    "JobFate",
    "JobState",
    "LatencyModel",
    "drop_connection",
    "normalize_format",
    "render_image",
]

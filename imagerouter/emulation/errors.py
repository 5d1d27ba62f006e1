"""The one error a bad emulator spec (`--faults`, `--latency`) raises.

A `RequestValidationError` (and so a `ValueError`): the CLI prints it as one line and exits 2,
before any emulator starts, and Python callers can catch it like any other bad input.
"""

from __future__ import annotations

from ..errors import RequestValidationError

__all__ = ["EmulationSpecError"]


class EmulationSpecError(RequestValidationError):
    """`field` is the option ("faults" or "latency"); the message names the bad part and says
    what is allowed."""

"""imagerouter: route image generation and editing across paid aggregators."""

from __future__ import annotations

"""An OpenAI-compatible images gateway in front of the Router (`imagerouter serve`).

Apps that speak OpenAI's images API point their client at it and get cheapest-provider
routing, failover, budgets and the ledger; long jobs get an async jobs API. See docs/gateway.md.
"""

from __future__ import annotations

from .app import create_app
from .service import Gateway

__all__ = ["Gateway", "create_app"]

"""Browser-facing guards in front of every route: the `Host` check and the `Origin` check.

Loopback is not a trust boundary: any web page can make a browser POST to
`http://127.0.0.1:8000` (a `text/plain` body needs no CORS preflight), and a DNS-rebinding
page reaches it under its own name (`Host: evil.example:8000`, same-origin to the browser).
So, before any route runs:

- **Host**: the `Host` header must name the address served (the socket's local address, plus
  `localhost`, `127.0.0.1` and `::1` when that is loopback), the host of
  `gateway.public_base_url`, or a `gateway.allowed_hosts` entry; a port in it must be the port
  served (or the entry's). Anything else is a 421 `host_not_allowed`.
- **Origin**: a request without `Origin` (curl, SDKs, providers) is not cross-origin; one whose
  Origin is the Host it was sent to is same-origin. Any other Origin must be listed in
  `gateway.cors_origins`, else 403 `origin_not_allowed`. Listed origins get CORS preflights
  answered (204) and `Access-Control-Allow-Origin` on their responses.

Starlette's CORSMiddleware is not used: it only leaves CORS headers off for an unlisted
origin, and the request still runs (and pays) - the browser merely hides the answer.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

__all__ = ["ALLOWED_REQUEST_HEADERS", "HostRule", "OriginGuard", "parse_host", "same_origin"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# What the official clients send; OpenAI-* and X-Stainless-* (the SDKs' telemetry) by prefix.
ALLOWED_REQUEST_HEADERS = frozenset(
    {"authorization", "content-type", "idempotency-key", "accept", "user-agent"}
)
_ALLOWED_HEADER_PREFIXES = ("openai-", "x-stainless-")
_ALLOWED_METHODS = "GET, POST, OPTIONS"
_EXPOSED_HEADERS = (
    "x-imagerouter-job-id, x-imagerouter-request-id, x-imagerouter-provider, "
    "x-imagerouter-model, x-imagerouter-cost-usd, x-imagerouter-billed-usd, location, "
    "retry-after, x-should-retry"
)
_PREFLIGHT_MAX_AGE = "600"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6]:port` -> (lowercase host, port); None if malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif ":" in value:  # a bare IPv6 address
        host, port_text = value, None
    else:
        host, port_text = value, None
    if not host:
        return None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


@dataclass(frozen=True)
class HostRule:
    """One accepted host: a name, address or `*.suffix` pattern, and a port (None: any)."""

    pattern: str
    port: int | None

    def matches(self, host: str, port: int | None) -> bool:
        if self.port is not None and port is not None and port != self.port:
            return False
        if self.pattern == "*":
            return True
        if self.pattern.startswith("*."):
            return fnmatch.fnmatchcase(host, self.pattern) and host.count(".") >= 2
        return host == self.pattern

    @classmethod
    def parse(cls, entry: str) -> HostRule:
        parsed = parse_host(entry) if entry != "*" else ("*", None)
        if parsed is None:
            raise ValueError(f"not a host: {entry!r}")
        return cls(*parsed)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(origin: str, host: tuple[str, int | None]) -> bool:
    """Whether `Origin` names the very host:port the request was sent to."""
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False
    try:
        origin_port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        return False
    name, port = host
    return parts.hostname == name and origin_port == (port or _DEFAULT_PORTS[parts.scheme])


class OriginGuard:
    """ASGI middleware: refuse foreign Hosts and unlisted Origins, answer CORS preflights."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
        public_base_url: str | None = None,
    ) -> None:
        self.app = app
        self.rules = [HostRule.parse(entry) for entry in allowed_hosts]
        if public_base_url:
            public = urlsplit(public_base_url)
            if public.hostname:
                self.rules.append(HostRule(public.hostname.lower(), public.port))
        self.origins = frozenset(origin.lower().rstrip("/") for origin in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = self._host(headers.get("host", ""), scope.get("server"))
        if host is None:
            await _refuse(scope, receive, send, ApiError(
                421,
                "The Host header names an address this gateway does not serve. Send the "
                "request to the address it listens on, or list the name in "
                "gateway.allowed_hosts.",
                code="host_not_allowed",
            ))
            return
        origin = headers.get("origin")
        if origin is None or same_origin(origin, host):
            await self.app(scope, receive, send)
            return
        listed = origin.lower().rstrip("/") in self.origins or "*" in self.origins
        if not listed:
            await _refuse(scope, receive, send, ApiError(
                403,
                "Cross-origin requests are refused: this Origin is not in "
                "gateway.cors_origins.",
                code="origin_not_allowed",
            ))
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(scope, receive, send, headers, origin)
            return
        await self.app(scope, receive, _with_cors(send, origin))

    def _host(
        self, value: str, server: tuple[str, int | None] | None
    ) -> tuple[str, int | None] | None:
        """The parsed Host when it is accepted, else None."""
        parsed = parse_host(value)
        if parsed is None:
            return None
        name, port = parsed
        if server is not None:
            served, served_port = server[0].lower(), server[1]
            names = {served, *(LOOPBACK_NAMES if _is_loopback(served) else ())}
            if name in names and (port is None or port == served_port):
                return parsed
        if any(rule.matches(name, port) for rule in self.rules):
            return parsed
        return None

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, origin: str
    ) -> None:
        method = headers["access-control-request-method"].strip().upper()
        wanted = [h.strip().lower()
                  for h in headers.get("access-control-request-headers", "").split(",")
                  if h.strip()]
        refused = [h for h in wanted if h not in ALLOWED_REQUEST_HEADERS
                   and not h.startswith(_ALLOWED_HEADER_PREFIXES)]
        if method not in ("GET", "POST") or refused:
            what = f"header {refused[0]!r}"[:100] if refused else f"method {method!r}"[:100]
            await _refuse(scope, receive, send, ApiError(
                403, f"CORS preflight refused: {what} is not allowed", code="cors_refused"
            ))
            return
        response = Response(status_code=204, headers={
            "access-control-allow-origin": origin,
            "access-control-allow-methods": _ALLOWED_METHODS,
            "access-control-allow-headers": ", ".join(wanted) or "authorization, content-type",
            "access-control-max-age": _PREFLIGHT_MAX_AGE,
            "vary": "Origin",
        })
        await response(scope, receive, send)


def _with_cors(send: Send, origin: str) -> Send:
    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers["access-control-allow-origin"] = origin
            headers["access-control-expose-headers"] = _EXPOSED_HEADERS
            headers.add_vary_header("Origin")
        await send(message)

    return send_with_cors


async def _refuse(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
    # `Connection: close`: the body (if any) is never read, so the connection cannot be reused.
    await error_response(error, {"connection": "close"})(scope, receive, send)

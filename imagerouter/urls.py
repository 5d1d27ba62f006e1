"""URL safety: credentials out of records, http(s) base URLs only, and which hosts we download
result images from.

The download host policy (`HostPolicy`) exists because the downloader fetches whatever URL a
provider's answer names. A compromised or buggy provider (or a man in the middle of a
misconfigured base URL) could point it at `http://169.254.169.254/` or an internal service, and
the router would fetch it with its own network position. So a provider's result images are
fetched only from the hosts its plugin documents (`Provider.download_hosts`), the host of its
own API, and the hosts the user adds (`downloads.allowed_hosts`); an address on a private,
loopback or link-local network is refused unless the provider itself runs on loopback (an
emulator).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "HostPolicy",
    "Resolver",
    "check_http_url",
    "host_matches",
    "is_loopback_url",
    "is_private_address",
    "strip_credentials",
    "strip_credentials_in_text",
    "system_resolve",
]

# `scheme://user:pass@` anywhere in a text (a message, a log line).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")


def strip_credentials(url: str) -> str:
    """`url` without `user:password@`; anything unparsable is returned with the userinfo cut
    by pattern, so a malformed URL never carries its password into a record."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(r"\1", url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def strip_credentials_in_text(text: str) -> str:
    """Every `scheme://user:pass@` in free text, cut down to `scheme://`."""
    return _USERINFO.sub(r"\1", text)


def check_http_url(url: str) -> str | None:
    """Why `url` is not usable as an API base URL (None when it is): http(s), with a host,
    without credentials, a query or a fragment."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        scheme = f"a {parts.scheme}: URL" if parts.scheme else "not a URL"
        return f"must be an http(s) URL such as https://api.example.com, not {scheme}"
    if not parts.hostname:
        return "must name a host, e.g. https://api.example.com"
    if "@" in parts.netloc:
        return "must not contain a user name or password (the API key is sent as a header)"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_private_address(host: str) -> bool:
    """Whether `host` is an IP literal outside the public internet (loopback, private,
    link-local such as 169.254.169.254, multicast, reserved, unspecified)."""
    address = _address(host)
    if address is None:
        return False
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _is_loopback_host(host: str) -> bool:
    address = _address(host)
    if address is not None:
        return address.is_loopback
    return host.lower().rstrip(".") in ("localhost", "localhost.localdomain")


def is_loopback_url(url: str) -> bool:
    """Whether `url` points at this machine (an emulator's base URL)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return host is not None and _is_loopback_host(host)


def host_matches(host: str, pattern: str) -> bool:
    """`pattern` is a host name (`file.runapi.ai`), or `*.domain` for any subdomain of it."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


# host name -> the addresses it resolves to (as text)
Resolver = Callable[[str], Awaitable[list[str]]]


async def system_resolve(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class HostPolicy:
    """The hosts one provider's result images may be downloaded from."""

    hosts: tuple[str, ...]
    allow_loopback: bool = False  # only for a provider on loopback (an emulator)
    resolve: Resolver = field(default=system_resolve, compare=False, repr=False)

    @classmethod
    def build(
        cls, documented: Iterable[str], base_url: str, extra: Iterable[str] = ()
    ) -> HostPolicy:
        """The plugin's documented hosts, the API's own host and the user's additions. A
        provider whose API is on loopback is an emulator: loopback downloads are then fine."""
        hosts = [*documented, *extra]
        try:
            api_host = urlsplit(base_url).hostname
        except ValueError:
            api_host = None
        if api_host:
            hosts.append(api_host)
        return cls(hosts=tuple(dict.fromkeys(h.lower() for h in hosts)),
                   allow_loopback=is_loopback_url(base_url))

    def refusal(self, url: str) -> str | None:
        """Why `url` may not be downloaded (None when it may)."""
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return "the URL is not valid"
        if not host:
            return "the URL has no host"
        if self.allow_loopback and _is_loopback_host(host):
            return None
        if is_private_address(host) or _is_loopback_host(host):
            return (
                f"{host} is a private, loopback or link-local address; result images are "
                "downloaded only from public hosts"
            )
        if any(host_matches(host, pattern) for pattern in self.hosts):
            return None
        allowed = ", ".join(self.hosts) or "none"
        return (
            f"{host} is not one of the provider's download hosts ({allowed}); add it to "
            "downloads.allowed_hosts if it is yours"
        )

    async def refusal_after_lookup(self, url: str) -> str | None:
        """`refusal(url)`, then, for an allowed host name, whether any address it resolves to
        is private: an allowed domain can still name an internal machine (inside AWS, an
        `ec2-...amazonaws.com` name resolves to a private address). A failed lookup is left
        to the download, which then fails as a (retryable) network error."""
        refusal = self.refusal(url)
        if refusal is not None:
            return refusal
        host = urlsplit(url).hostname or ""
        if _address(host) is not None or (self.allow_loopback and _is_loopback_host(host)):
            return None  # an IP literal was judged above; no lookup for an emulator's host
        try:
            addresses = await self.resolve(host)
        except (OSError, UnicodeError):
            return None
        private = [a for a in addresses if is_private_address(a)]
        if private:
            return (
                f"{host} resolves to {private[0]}, a private, loopback or link-local address; "
                "result images are downloaded only from public hosts"
            )
        return None

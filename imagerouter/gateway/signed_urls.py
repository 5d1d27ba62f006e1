"""Signed, expiring image URLs that work in an `<img src>` without the gateway key.

`response_format=url` answers `{base}/v1/signed/{relative path}?expires=<unix s>&sig=<hex>`:
the path of the saved image under the gateway's output directory, and an HMAC-SHA256 of the
path and expiry under a per-gateway secret. The URL names the file on disk rather than an
in-memory id, so it keeps working across restarts until it expires (`gateway.url_ttl_s`).

The secret is `gateway.url_secret`, or else one generated once and kept in
`$IMAGEROUTER_HOME/gateway-url-secret` (mode 0600). It is never logged or shown.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from ..paths import imagerouter_home

__all__ = ["SECRET_FILE", "UrlSigner", "load_url_secret"]

SECRET_FILE = "gateway-url-secret"  # noqa: S105 (a file name, not a secret)


def load_url_secret(configured: str | None) -> bytes:
    """The configured secret, or the one kept under the imagerouter home (made on first use)."""
    if configured:
        return configured.encode("utf-8")
    path = imagerouter_home() / SECRET_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = ""
    if len(text) >= 32:
        return text.encode("ascii")
    text = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
    return text.encode("ascii")


class UrlSigner:
    """Signs and checks `/v1/signed/...` URLs for files under `root`."""

    def __init__(
        self, secret: bytes, root: Path, *, ttl_s: int, clock: Callable[[], float]
    ) -> None:
        self._secret = secret
        self.root = root
        self.ttl_s = ttl_s
        self.clock = clock

    def __repr__(self) -> str:
        return f"UrlSigner(root={str(self.root)!r}, ttl_s={self.ttl_s})"  # never the secret

    def _sig(self, relative: str, expires: int) -> str:
        message = f"{relative}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def url(self, base: str, path: Path) -> str | None:
        """A signed URL for `path`, or None when it is not under the output directory."""
        try:
            relative = path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return None
        expires = int(self.clock()) + self.ttl_s
        return (
            f"{base}/v1/signed/{quote(relative)}?expires={expires}"
            f"&sig={self._sig(relative, expires)}"
        )

    def check(self, relative: str, expires: str | None, sig: str | None) -> Path | None:
        """The file a URL names when its signature is right and it has not expired."""
        if not expires or not sig or not expires.isdigit():
            return None
        if not hmac.compare_digest(self._sig(relative, int(expires)), sig):
            return None
        if int(expires) < self.clock():
            return None
        root = self.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

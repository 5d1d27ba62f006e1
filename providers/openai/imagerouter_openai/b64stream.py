"""Pull `b64_json` images out of OpenAI's answer while it streams in.

OpenAI returns images inline as base64 (a JSON body, or SSE events whose data is JSON). A
4k PNG is tens of megabytes of base64; parsing the whole body with `json.loads` would hold
it twice or more. `B64Splitter` instead decodes every `"b64_json": "..."` value straight to
a temp file as the bytes arrive, and keeps the rest of the answer (the "skeleton", small)
with each value replaced by `"@file:N"`, so the skeleton is then parsed as ordinary JSON.
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["FILE_MARK", "B64Splitter", "SplitError"]

FILE_MARK = "@file:"
_KEY = b'"b64_json"'
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_SKELETON_LIMIT = 4 * 2**20  # everything but the images: a few KB in practice


class SplitError(ValueError):
    """The answer is not what OpenAI sends (a broken value, too large, not base64)."""


class B64Splitter:
    """Feed the answer's bytes in order; read `skeleton` and `files` at the end.

    States: scanning the skeleton for the key; after the key, waiting for `:` and the
    opening quote; inside the value, decoding. JSON may escape `/` as `\\/`: base64 has no
    backslash, so backslashes inside the value are dropped.
    """

    def __init__(self, folder: str | Path | None, *, max_image_bytes: int) -> None:
        self.folder = str(folder) if folder is not None else None
        self.max_image_bytes = max_image_bytes
        self.skeleton = bytearray()
        self.files: list[str] = []
        self._state = "scan"
        self._pending = b""  # base64 characters not yet a multiple of 4
        self._handle: int | None = None
        self._written = 0

    def feed(self, chunk: bytes) -> None:
        position = 0
        while position < len(chunk):
            if self._state == "value":
                position = self._value(chunk, position)
            elif self._state == "colon":
                byte = chunk[position]
                position += 1
                self.skeleton.append(byte)
                if byte == ord('"'):
                    self._open()
                elif byte not in b" \t\r\n:":
                    self._state = "scan"  # `"b64_json": null` and the like: not an image
            else:
                position = self._scan(chunk, position)
        if len(self.skeleton) > _SKELETON_LIMIT:
            raise SplitError("the answer's non-image part is larger than 4 MB")

    def _scan(self, chunk: bytes, position: int) -> int:
        self.skeleton += chunk[position:]
        # The key may straddle two chunks: look back far enough to see it whole.
        start = max(0, len(self.skeleton) - (len(chunk) - position) - len(_KEY))
        found = self.skeleton.find(_KEY, start)
        if found < 0:
            return len(chunk)
        after = found + len(_KEY)
        consumed_past_key = len(self.skeleton) - after
        del self.skeleton[after:]
        self._state = "colon"
        return len(chunk) - consumed_past_key

    def _open(self) -> None:
        folder = self.folder
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".openai-", suffix=".part", dir=folder)
        self._handle = handle
        self._written = 0
        self.files.append(name)
        self.skeleton += f"{FILE_MARK}{len(self.files) - 1}".encode()
        self._state = "value"

    def _value(self, chunk: bytes, position: int) -> int:
        end = chunk.find(b'"', position)
        piece = chunk[position:] if end < 0 else chunk[position:end]
        self._decode(piece.replace(b"\\", b"").replace(b"\r", b"").replace(b"\n", b""))
        if end < 0:
            return len(chunk)
        self._close()
        self.skeleton.append(ord('"'))
        self._state = "scan"
        return end + 1

    def _decode(self, piece: bytes) -> None:
        if not piece:
            return
        if not _B64.issuperset(piece):
            raise SplitError("an image's b64_json holds characters that are not base64")
        data = self._pending + piece
        usable = len(data) - len(data) % 4
        self._pending = data[usable:]
        if usable:
            try:
                decoded = base64.b64decode(data[:usable], validate=True)
            except ValueError as exc:
                raise SplitError(f"an image's b64_json is not valid base64 ({exc})") from None
            self._written += len(decoded)
            if self._written > self.max_image_bytes:
                raise SplitError(f"an image is larger than {self.max_image_bytes:,} bytes")
            assert self._handle is not None
            os.write(self._handle, decoded)

    def _close(self) -> None:
        if self._pending:
            raise SplitError("an image's b64_json is cut short (not a multiple of 4)")
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    @property
    def complete(self) -> bool:
        """False while a value is still open (the answer was cut off inside an image)."""
        return self._state != "value"

    def take_skeleton(self, upto: int) -> bytes:
        """Remove and return the first `upto` bytes of the skeleton (an SSE event read)."""
        head = bytes(self.skeleton[:upto])
        del self.skeleton[:upto]
        return head

    def discard(self) -> None:
        """Close and delete every file (the answer failed, or its images were handed on)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                os.close(self._handle)
            self._handle = None
        for name in self.files:
            with contextlib.suppress(OSError):
                os.unlink(name)
        self.files.clear()

"""Read a local file with a hard byte cap, whatever the file says its size is.

`stat()` is not a cap: `/dev/zero`, a FIFO or `/proc` files report size 0 and then never end,
so a size check followed by `read_bytes()` reads until memory runs out. Here the file is opened
first (non-blocking, so a FIFO without a writer cannot hang us), refused unless `fstat` says it
is a regular file, and read in chunks up to `max_bytes + 1` bytes: one byte over the cap is
enough to know it is too big.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["FileReadError", "read_bounded"]

_CHUNK = 1024 * 1024


class FileReadError(ValueError):
    """A file could not be read within its cap. `reason` is one of "missing", "not_regular",
    "too_large", "unreadable"; the message says what is wrong without naming the file."""

    def __init__(self, message: str, reason: str, *, size: int | None = None) -> None:
        self.reason = reason
        self.size = size  # for "too_large": the size stat() reported, when it is honest
        super().__init__(message)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file `path`, at most `max_bytes` of them, or FileReadError."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileReadError("file not found", "missing") from None
    except IsADirectoryError:  # Windows cannot open a directory at all
        raise FileReadError("is a directory, not a file", "not_regular") from None
    except OSError as exc:
        raise FileReadError(f"cannot be read: {exc.strerror or exc}", "unreadable") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileReadError(f"is {_kind(info.st_mode)}, not a file", "not_regular")
        if info.st_size > max_bytes:
            raise FileReadError("is over the size limit", "too_large", size=info.st_size)
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # the file grew past its stat() size while we read it
            raise FileReadError("is over the size limit", "too_large")
        return b"".join(chunks)
    except OSError as exc:
        raise FileReadError(f"cannot be read: {exc.strerror or exc}", "unreadable") from None
    finally:
        os.close(fd)

"""Where result images go: the output directory, checked before anything is paid for, and
the mode a saved file gets."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import RequestValidationError

__all__ = ["OutputDirError", "ensure_writable_dir", "file_mode"]


class OutputDirError(RequestValidationError):
    """The output directory cannot take a file. A RequestValidationError on `output_dir` (the
    CLI's exit 2), its own class so a server can tell its own misconfigured directory from a
    client's bad field."""

    def __init__(self, message: str) -> None:
        super().__init__("output_dir", message)


def _read_umask() -> int:
    """The process umask, read without changing it where the platform allows (setting it,
    even for an instant, races with files other threads create)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: a process changes its umask rarely if ever


def file_mode() -> int:
    """The mode a saved image gets: 0o666 less the umask, like any other tool's output
    (mkstemp alone makes 0o600, which other users and tools in the group cannot read)."""
    return 0o666 & ~_UMASK


def ensure_writable_dir(path: Path) -> None:
    """Create `path` if needed and prove it takes a file (write, then remove a probe), or
    raise OutputDirError. Called before anything is paid for: a
    read-only filesystem, `/dev/null` or `/proc/self` would otherwise fail only after the job
    was billed. Not cached: a directory can become unwritable between two requests, and a
    stat, a mkdir and a probe cost well under a millisecond on a local disk."""
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"{path} cannot be created: {exc.strerror or exc}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".imagerouter-probe-", dir=path)
    except OSError as exc:
        raise OutputDirError(f"{path} is not writable: {exc.strerror or exc}") from None
    try:
        os.write(fd, b"probe")
    except OSError as exc:
        raise OutputDirError(f"{path} is not writable: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)

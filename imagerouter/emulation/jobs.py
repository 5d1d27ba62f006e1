"""Emulated jobs: how a job moves through queued -> running -> done, and where its files live.

Both emulators keep their jobs in a `JobBook`. A job's state is a pure function of the time
(`state(now)`), so tests drive it with an injected clock instead of sleeping. Images are
rendered lazily, once per job, the first time someone asks for its files.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from .images import MIME_TYPES, normalize_format, render_image

if TYPE_CHECKING:
    from .counters import EmulatorCounters

__all__ = ["EmulatedJob", "JobBook", "JobFate", "JobState"]

JobFate = Literal["succeed", "fail", "stuck"]
JobState = Literal["queued", "running", "succeeded", "failed"]

_QUEUED_SHARE = 0.2  # the first fifth of a job's duration is spent "queued"
_FILE_URL = re.compile(r"/files/([0-9A-Za-z_-]+)$")  # both emulators serve files there


@dataclass
class EmulatedJob:
    """One job an emulator accepted."""

    id: str  # uuid4 string
    created_at: float  # time.monotonic() (or the test's clock)
    duration: float  # sampled latency, seconds
    fate: JobFate
    width: int
    height: int
    fmt: str  # png | jpeg | webp
    count: int  # images to produce
    prompt: str
    cost: Decimal  # billed when it succeeds
    transparent: bool = False
    source: bytes | None = field(default=None, repr=False)  # an edit's first input image
    extra: dict[str, Any] = field(default_factory=dict)  # provider-specific
    settled: bool = False  # billed (or counted as failed) already

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def state(self, now: float) -> JobState:
        """Queued for the first 20% of the duration, running until it ends, then the fate;
        a "stuck" job stays running forever."""
        elapsed = now - self.created_at
        if elapsed < self.duration * _QUEUED_SHARE:
            return "queued"
        if elapsed < self.duration or self.fate == "stuck":
            return "running"
        return "succeeded" if self.fate == "succeed" else "failed"

    def progress(self, now: float) -> float:
        """0.0 .. 1.0, for providers that report progress (a stuck job never passes 0.99)."""
        if self.duration <= 0:
            return 0.99 if self.fate == "stuck" else 1.0
        share = max(0.0, min(1.0, (now - self.created_at) / self.duration))
        return min(share, 0.99) if self.fate == "stuck" else share

    @property
    def finishes_at(self) -> float | None:
        return None if self.fate == "stuck" else self.created_at + self.duration


@dataclass(frozen=True)
class _StoredFile:
    data: bytes
    mime: str
    name: str


class JobBook:
    """Thread-safe store of emulated jobs and their rendered files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, EmulatedJob] = {}
        self._files: dict[str, _StoredFile] = {}
        self._job_files: dict[str, list[str]] = {}
        self._render_locks: dict[str, threading.Lock] = {}

    def add(self, job: EmulatedJob) -> None:
        job.fmt = normalize_format(job.fmt)
        with self._lock:
            if job.id in self._jobs:
                raise ValueError(f"job {job.id} already exists")
            self._jobs[job.id] = job

    def get(self, job_id: str) -> EmulatedJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[EmulatedJob]:
        """Every job, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def find(self, key: str, value: Any) -> list[EmulatedJob]:
        """Jobs whose `extra[key] == value` (e.g. a client reference), oldest first."""
        with self._lock:
            return [job for job in self._jobs.values() if job.extra.get(key) == value]

    def files_for(self, job: EmulatedJob) -> list[str]:
        """The job's file ids; its images are rendered on the first call, then cached."""
        with self._lock:
            cached = self._job_files.get(job.id)
            if cached is not None:
                return list(cached)
            render_lock = self._render_locks.setdefault(job.id, threading.Lock())
        # Render outside the book's lock so one slow job does not stall every request.
        with render_lock:
            with self._lock:
                cached = self._job_files.get(job.id)
            if cached is not None:
                return list(cached)
            ext = "jpg" if job.fmt == "jpeg" else job.fmt
            rendered = []
            for index in range(job.count):
                seed = zlib.crc32(f"{job.id}/{index}".encode())
                data = render_image(
                    job.prompt,
                    job.width,
                    job.height,
                    job.fmt,
                    transparent=job.transparent,
                    seed=seed,
                    label=f"image {index + 1} of {job.count}, job {job.id[:8]}",
                    source=job.source,
                )
                rendered.append(_StoredFile(data, MIME_TYPES[job.fmt], f"{job.id}-{index}.{ext}"))
            with self._lock:
                ids = []
                for stored in rendered:
                    file_id = uuid.uuid4().hex
                    self._files[file_id] = stored
                    ids.append(file_id)
                self._job_files[job.id] = ids
                return list(ids)

    def file(self, file_id: str) -> tuple[bytes, str] | None:
        """(bytes, mime type) of a stored file, or None."""
        with self._lock:
            stored = self._files.get(file_id)
        return None if stored is None else (stored.data, stored.mime)

    def file_name(self, file_id: str) -> str | None:
        with self._lock:
            stored = self._files.get(file_id)
        return None if stored is None else stored.name

    def source_image(self, urls: Sequence[Any]) -> bytes | None:
        """The bytes of the first input image this emulator can see without a network: a
        `data:` URI or one of its own `/files/{id}` URLs (an upload). None otherwise: an
        emulator never fetches a URL, so such an edit is drawn like a generation."""
        for url in urls:
            if not isinstance(url, str):
                continue
            if url.startswith("data:"):
                head, _, payload = url.partition(",")
                if head.endswith(";base64"):
                    try:
                        return base64.b64decode(payload, validate=True)
                    except (binascii.Error, ValueError):
                        continue
                continue
            match = _FILE_URL.search(urlsplit(url).path)
            if match is not None:
                found = self.file(match.group(1))
                if found is not None:
                    return found[0]
        return None

    def put_file(self, data: bytes, mime: str, name: str) -> str:
        """Store an upload; returns its file id."""
        file_id = uuid.uuid4().hex
        with self._lock:
            self._files[file_id] = _StoredFile(bytes(data), mime, name)
        return file_id

    def settle(self, now: float, counters: EmulatorCounters) -> None:
        """Bill every job that has succeeded by `now` and count every one that failed, once.

        Billing follows time, not polls: a provider bills a finished job even if nobody ever
        asks for it again (a client that timed out and failed over still pays). Emulators call
        this on every request; tests call it before asserting on `billed_usd`.
        """
        with self._lock:
            done = []
            for job in self._jobs.values():
                if job.settled:
                    continue
                state = job.state(now)
                if state in ("succeeded", "failed"):
                    job.settled = True
                    done.append((job, state))
        for job, state in done:
            if state == "succeeded":
                counters.add_billed(job.cost)
            else:
                counters.bump("failed")

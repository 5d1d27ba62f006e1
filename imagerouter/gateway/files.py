"""Served images: an unguessable file id for each image a job saved.

`GET /v1/files/{id}` (and `/v1/files/{id}/content`, where OpenAI's files API serves content)
answers with the image bytes. The ids live in memory for the life of the server process
(bounded; the oldest are forgotten first) and, with a ledger, in its `gateway_files` table
(written with the job through the job store, stores/gateway_jobs.py), so any replica sharing
the ledger and `output.dir` serves any image, including those of a job another replica's
sweeper ended for a replica that died.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..stores.gateway_jobs import FileRow, GatewayJobStore, LedgerJobStore

if TYPE_CHECKING:
    from ..ledger import Ledger

__all__ = [
    "MEDIA_TYPES",
    "FileStore",
    "LedgerOf",
    "StoreOf",
    "StoredFile",
    "ledger_store",
    "new_file_id",
]

log = logging.getLogger("imagerouter.gateway")

LedgerOf = Callable[[], "Ledger | None"]
StoreOf = Callable[[], GatewayJobStore | None]

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def new_file_id() -> str:
    return f"file-{secrets.token_hex(16)}"


def ledger_store(ledger_of: LedgerOf) -> StoreOf:
    """The job store on whichever ledger `ledger_of` gives now (the gateway's Router, and
    so its ledger, is built on first use), made once per ledger."""
    made: list[tuple[Ledger, LedgerJobStore]] = []

    def store() -> GatewayJobStore | None:
        ledger = ledger_of()
        if ledger is None:
            return None
        if not made or made[0][0] is not ledger:
            made[:] = [(ledger, LedgerJobStore(ledger))]
        return made[0][1]

    return store


@dataclass(frozen=True)
class StoredFile:
    id: str
    path: Path
    format: str
    job_id: str

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(self.format, "application/octet-stream")

    @property
    def filename(self) -> str:
        return self.path.name

    @classmethod
    def of(cls, row: FileRow) -> StoredFile:
        return cls(row.id, Path(row.path), row.format, row.job_id)


class FileStore:
    """File ids to image paths."""

    def __init__(self, *, max_files: int = 100_000, store_of: StoreOf | None = None) -> None:
        self.max_files = max_files
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._store_of = store_of  # where other replicas' file ids are found

    def add(self, path: Path, fmt: str, *, job_id: str) -> StoredFile:
        stored = StoredFile(id=new_file_id(), path=path, format=fmt, job_id=job_id)
        self._files[stored.id] = stored
        while len(self._files) > self.max_files:
            self._files.popitem(last=False)
        return stored

    def local(self, file_id: str) -> StoredFile | None:
        """A file this process registered (no I/O)."""
        return self._files.get(file_id)

    async def get(self, file_id: str) -> StoredFile | None:
        """The file, if its id is known here or in the ledger and its image is on disk."""
        stored = self._files.get(file_id) or await self._recorded(file_id)
        if stored is None or not await asyncio.to_thread(stored.path.is_file):
            return None
        return stored

    async def for_job(self, job_id: str) -> list[StoredFile]:
        """The files recorded for `job_id` (maybe by another replica), in the job's order."""
        try:
            store = None if self._store_of is None else self._store_of()
            rows = [] if store is None else await store.files_of(job_id)
        except Exception as exc:  # a ledger outage: this replica's own files still serve
            log.warning("gateway files: the ledger is unreadable (%s)", type(exc).__name__)
            return []
        return [StoredFile.of(row) for row in rows]

    async def _recorded(self, file_id: str) -> StoredFile | None:
        if self._store_of is None or not file_id.startswith("file-"):
            return None
        try:
            store = self._store_of()
            row = None if store is None else await store.file(file_id)
        except Exception as exc:
            log.warning("gateway files: the ledger is unreadable (%s)", type(exc).__name__)
            return None
        return None if row is None else StoredFile.of(row)

"""Served images: an unguessable file id for each image a job saved.

`GET /v1/files/{id}` (and `/v1/files/{id}/content`, where OpenAI's files API serves content)
answers with the image bytes. The ids live in memory for the life of the server process
(bounded; the oldest are forgotten first) and, with a ledger, in its `gateway_files` table
(written with the job, gateway/jobs.py `JobRecords`), so any replica sharing the ledger and
`output.dir` serves any image.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..ledger import Ledger

__all__ = ["MEDIA_TYPES", "FileStore", "LedgerOf", "StoredFile"]

log = logging.getLogger("imagerouter.gateway")

LedgerOf = Callable[[], "Ledger | None"]

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


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


class FileStore:
    """File ids to image paths."""

    def __init__(self, *, max_files: int = 100_000, ledger_of: LedgerOf | None = None) -> None:
        self.max_files = max_files
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._ledger_of = ledger_of  # where other replicas' file ids are found

    def add(self, path: Path, fmt: str, *, job_id: str) -> StoredFile:
        stored = StoredFile(id=f"file-{secrets.token_hex(16)}", path=path, format=fmt,
                            job_id=job_id)
        self._files[stored.id] = stored
        while len(self._files) > self.max_files:
            self._files.popitem(last=False)
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        stored = self._files.get(file_id) or self._recorded(file_id)
        if stored is None or not stored.path.is_file():
            return None
        return stored

    def for_job(self, job_id: str) -> list[StoredFile]:
        """The files another replica recorded for `job_id`, in the job's order."""
        ledger = None if self._ledger_of is None else self._ledger_of()
        if ledger is None:
            return []
        try:
            with ledger.reading() as conn:
                rows = conn.execute(
                    "SELECT id, path, format FROM gateway_files WHERE job_id = ?"
                    " ORDER BY position", (job_id,)
                ).fetchall()
        except Exception as exc:  # a ledger outage: this replica's own files still serve
            log.warning("gateway files: the ledger is unreadable (%s)", type(exc).__name__)
            return []
        return [StoredFile(str(i), Path(str(p)), str(f), job_id) for i, p, f in rows]

    def _recorded(self, file_id: str) -> StoredFile | None:
        ledger = None if self._ledger_of is None else self._ledger_of()
        if ledger is None or not file_id.startswith("file-"):
            return None
        try:
            with ledger.reading() as conn:
                row = conn.execute(
                    "SELECT path, format, job_id FROM gateway_files WHERE id = ?", (file_id,)
                ).fetchone()
        except Exception as exc:
            log.warning("gateway files: the ledger is unreadable (%s)", type(exc).__name__)
            return None
        if row is None:
            return None
        return StoredFile(file_id, Path(str(row[0])), str(row[1]), str(row[2]))

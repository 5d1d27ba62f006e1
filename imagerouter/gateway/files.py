"""Served images: an unguessable file id for each image a job saved.

`GET /v1/files/{id}` (and `/v1/files/{id}/content`, where OpenAI's files API serves content)
answers with the image bytes. The ids live in memory for the life of the server process
(bounded; the oldest are forgotten first); the images themselves stay on disk, recorded in the
ledger.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MEDIA_TYPES", "FileStore", "StoredFile"]

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

    def __init__(self, *, max_files: int = 100_000) -> None:
        self.max_files = max_files
        self._files: OrderedDict[str, StoredFile] = OrderedDict()

    def add(self, path: Path, fmt: str, *, job_id: str) -> StoredFile:
        stored = StoredFile(id=f"file-{secrets.token_hex(16)}", path=path, format=fmt,
                            job_id=job_id)
        self._files[stored.id] = stored
        while len(self._files) > self.max_files:
            self._files.popitem(last=False)
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        stored = self._files.get(file_id)
        if stored is None or not stored.path.is_file():
            return None
        return stored

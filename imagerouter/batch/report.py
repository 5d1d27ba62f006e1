"""The batch report: one JSON object per line (id, status, provider, model, cost_usd, paths,
error, and the line number and request id).

Lines are appended and flushed as they finish, so a killed batch leaves a report of what it
got so far; a finished batch rewrites the file in line order, atomically. A restarted batch
reports every line again (the ones done earlier come back from the ledger without a call), so
its report is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import IO

from .run import BatchOutcome

__all__ = ["ReportWriter"]


class ReportWriter:
    """Writes outcomes to `path` as they come; `finish()` puts them in line order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._outcomes: list[BatchOutcome] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = path.open("w", encoding="utf-8")

    def add(self, outcome: BatchOutcome) -> None:
        self._outcomes.append(outcome)
        if self._file is not None:
            self._file.write(_line(outcome))
            self._file.flush()

    def finish(self) -> None:
        """Rewrite the report in line order (a temporary file replaced in one step)."""
        self.close()
        ordered = sorted(self._outcomes, key=lambda outcome: outcome.line)
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("w", encoding="utf-8") as handle:
            handle.writelines(_line(outcome) for outcome in ordered)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _line(outcome: BatchOutcome) -> str:
    return json.dumps(outcome.to_dict(), sort_keys=False, ensure_ascii=False) + "\n"

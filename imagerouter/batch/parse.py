"""Reading a batch: one request per JSONL line or CSV row, every line checked up front.

A line has the fields of `generate` / `edit` (prompt, model, tier, quality, size,
aspect_ratio, resolution, n, format, background, images, mask, providers, max_cost) and an
optional `id`. Relative image paths are relative to the batch file. Every bad line is
reported with its line number, all of them at once, before anything is paid for.

Each line gets an idempotency key (imagerouter/idempotency.py): a hash of the batch's source
(the file's absolute path) and the line's `id`, or, without one, its content and how many
identical lines came before it. Editing, reordering or appending lines keeps the keys of the
others, so a restarted batch never pays twice for a line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RequestValidationError
from ..request import ImageRequest

__all__ = [
    "MAX_LINES",
    "BatchFileError",
    "BatchLine",
    "LineProblem",
    "parse_file",
    "parse_requests",
]

MAX_LINES = 100_000
MAX_FILE_BYTES = 64 * 1024 * 1024
_ALIASES = {"format": "output_format", "max_cost": "max_cost_usd"}
_FIELDS = frozenset(ImageRequest.model_fields) - {"allow_url_inputs"}
_NAMES = ", ".join(sorted({"id", *(_FIELDS - set(_ALIASES.values())), *_ALIASES}))


@dataclass(frozen=True)
class LineProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class BatchFileError(RequestValidationError):
    """Bad lines in a batch; `problems` has every one of them with its line number."""

    def __init__(self, source: str, problems: list[LineProblem]) -> None:
        self.problems = problems
        shown = "; ".join(str(problem) for problem in problems[:5])
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        count = f"{len(problems)} bad line{'s' if len(problems) != 1 else ''}"
        super().__init__(source or "batch", f"{count} (nothing was sent): {shown}{more}")


@dataclass(frozen=True)
class BatchLine:
    """One validated line of a batch."""

    number: int  # 1-based line of the file (CSV: the header is line 1), or list position
    id: str
    fields: Mapping[str, Any]  # ImageRequest fields, paths made absolute
    request: ImageRequest
    key: str | None  # the idempotency key; None when the batch has no source to key it by

    @property
    def operation(self) -> str:
        return self.request.operation


def parse_file(path: Path) -> list[BatchLine]:
    """The lines of a `.jsonl` or `.csv` file, or BatchFileError naming every bad line."""
    source = str(path.expanduser().resolve())
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BatchFileError(source, [LineProblem(0, "the file is larger than 64 MiB")])
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RequestValidationError(source, f"is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise RequestValidationError(source, f"cannot be read ({exc.strerror})") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = list(_csv_rows(text))
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows = list(_jsonl_rows(text))
    else:
        raise RequestValidationError(source, "a batch file must end in .jsonl or .csv")
    return _validate(rows, source=source, base_dir=Path(source).parent)


def parse_requests(
    requests: Iterable[Mapping[str, Any] | BatchLine],
    *,
    source: str | None = None,
    base_dir: Path | None = None,
) -> list[BatchLine]:
    """Lines from Python dicts (as `Router.batch` takes them). With `source` (any stable
    name) every line is keyed, so a repeated batch never pays twice; without it none is."""
    rows: list[tuple[int, Any]] = []
    ready: list[BatchLine] = []
    for number, item in enumerate(requests, 1):
        if isinstance(item, BatchLine):
            ready.append(item)
        else:
            rows.append((number, item))
    if ready and rows:
        raise RequestValidationError("requests", "mix either BatchLine objects or dicts")
    if ready:
        return ready
    return _validate(rows, source=source, base_dir=base_dir or Path.cwd())


def _jsonl_rows(text: str) -> Iterable[tuple[int, Any]]:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            yield number, json.loads(line, parse_float=str)
        except json.JSONDecodeError as exc:
            yield number, _Broken(f"is not JSON ({exc.msg} at column {exc.colno})")


def _csv_rows(text: str) -> Iterable[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        number = reader.line_num
        if None in row:
            yield number, _Broken("has more cells than the header has columns")
            continue
        data: dict[str, Any] = {}
        for name, value in row.items():
            name = (name or "").strip()
            value = (value or "").strip()
            if not name or not value:
                continue  # an empty cell is a field left out
            if name in ("images", "providers"):
                data[name] = [part.strip() for part in value.split(";") if part.strip()]
            else:
                data[name] = value
        if data:
            yield number, data


class _Broken:
    """A line that could not even be read."""

    def __init__(self, message: str) -> None:
        self.message = message


def _validate(
    rows: Iterable[tuple[int, Any]], *, source: str | None, base_dir: Path
) -> list[BatchLine]:
    problems: list[LineProblem] = []
    lines: list[BatchLine] = []
    ids: dict[str, int] = {}
    seen: dict[str, int] = {}
    for number, row in rows:
        if len(lines) + len(problems) >= MAX_LINES:
            problems.append(LineProblem(number, f"a batch has at most {MAX_LINES} lines"))
            break
        try:
            line_id, fields = _fields(row, base_dir)
            request = ImageRequest.build(**fields)
            _check_files(request)
        except RequestValidationError as exc:
            problems.append(LineProblem(number, str(exc)))
            continue
        content = json.dumps(fields, sort_keys=True, default=str)
        if line_id is None:
            occurrence = seen.get(content, 0)
            seen[content] = occurrence + 1
            line_id = f"line-{number}"
            basis = f"line:{content}#{occurrence}"
        else:
            if line_id in ids:
                problems.append(
                    LineProblem(number, f"id: {line_id!r} is already used on line {ids[line_id]}")
                )
                continue
            ids[line_id] = number
            basis = f"id:{line_id}"
        key = None if source is None else _key(source, basis)
        lines.append(BatchLine(number, line_id, fields, request, key))
    if problems:
        raise BatchFileError(source or "requests", problems)
    if not lines:
        raise RequestValidationError(source or "requests", "the batch has no requests")
    return lines


def _fields(row: Any, base_dir: Path) -> tuple[str | None, dict[str, Any]]:
    if isinstance(row, _Broken):
        raise RequestValidationError("line", row.message)
    if not isinstance(row, Mapping):
        raise RequestValidationError("line", "must be a JSON object of request fields")
    fields: dict[str, Any] = {}
    line_id: str | None = None
    for name, value in row.items():
        if name == "id":
            if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
                raise RequestValidationError("id", "must be a non-empty string or number")
            line_id = str(value)
            if not line_id.isprintable() or len(line_id) > 200:
                raise RequestValidationError("id", "must be printable, at most 200 characters")
            continue
        target = _ALIASES.get(name, name)
        if target not in _FIELDS:
            raise RequestValidationError(str(name), f"is not a batch field; use {_NAMES}")
        if value is None:
            continue
        fields[target] = value
    for name in ("images", "mask"):
        if name in fields:
            fields[name] = _absolute(fields[name], base_dir, name)
    if "n" in fields and isinstance(fields["n"], str) and fields["n"].strip().isdigit():
        fields["n"] = int(fields["n"])
    return line_id, fields


def _absolute(value: Any, base_dir: Path, name: str) -> Any:
    if isinstance(value, list):
        return [_absolute(item, base_dir, name) for item in value]
    if not isinstance(value, str):
        raise RequestValidationError(name, "must be a file path (or a list of them)")
    if value.lower().startswith(("http://", "https://")):
        return value
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else base_dir / path)


def _check_files(request: ImageRequest) -> None:
    for item in (*request.images, *([request.mask] if request.mask else [])):
        if item.kind == "url":
            raise RequestValidationError(
                "images", f"{item.name}: URL inputs are not taken in a batch; download it first"
            )
        if item.path is not None and not item.path.is_file():
            raise RequestValidationError("images", f"{item.path} is not a file")


def _key(source: str, basis: str) -> str:
    digest = hashlib.sha256()
    for part in ("imagerouter-batch-v1", source, basis):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)
    return "batch-" + digest.hexdigest()

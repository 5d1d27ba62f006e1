"""Reading batch files: every bad line reported with its number, keys that survive edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagerouter.batch import BatchFileError, parse_file, parse_requests
from imagerouter.cli import cli


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_every_bad_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "b.jsonl",
        [
            {"prompt": "fine"},
            {"prompt": ""},
            "{not json",
            {"prompt": "x", "colour": "red"},
            {"prompt": "x", "n": 99},
            {"prompt": "x", "images": ["missing.png"]},
            [1, 2],
            {"prompt": "a", "id": "same"},
            {"prompt": "b", "id": "same"},
        ],
    )
    with pytest.raises(BatchFileError) as caught:
        parse_file(path)
    assert [p.line for p in caught.value.problems] == [2, 3, 4, 5, 6, 7, 9]
    messages = [p.message for p in caught.value.problems]
    assert messages[0].startswith("prompt:") and "is not JSON" in messages[1]
    assert messages[2].startswith("colour: is not a batch field")
    assert "missing.png is not a file" in messages[4]
    assert "already used on line 8" in messages[6]


def test_csv_rows_and_relative_images(tmp_path: Path, input_png: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "b.csv"
    path.write_text(
        "id,prompt,quality,n,format,images\n"
        "a,a red fox,low,2,webp,\n"
        f"b,make it blue,,,,../{input_png.name}\n"
    )
    first, second = parse_file(path)
    assert (first.id, first.number, first.request.n, first.request.output_format) == (
        "a",
        2,
        2,
        "webp",
    )
    assert second.number == 3 and second.operation == "edit"
    assert second.request.images[0].path == input_png


def test_keys_follow_ids_and_content_not_positions(tmp_path: Path) -> None:
    rows = [{"prompt": "one"}, {"prompt": "two", "id": "t"}, {"prompt": "one"}]
    keys = [line.key for line in parse_file(write_jsonl(tmp_path / "b.jsonl", rows))]
    assert len(set(keys)) == 3  # identical lines are two requests, not one
    moved = [{"prompt": "new"}, {"prompt": "two", "id": "t"}, {"prompt": "one"}, {"prompt": "one"}]
    again = [line.key for line in parse_file(write_jsonl(tmp_path / "b.jsonl", moved))]
    assert again[1:] == [keys[1], keys[0], keys[2]]
    other = [line.key for line in parse_file(write_jsonl(tmp_path / "c.jsonl", rows))]
    assert not set(other) & set(keys)  # another file, other keys
    assert all(line.key is None for line in parse_requests(rows))


def test_cli_exits_2_before_anything_is_sent(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "ok"}, {"prompt": "x", "size": "huge"}])
    result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{path}:2: size:" in result.output
    assert not (tmp_path / "out").exists()
    wrong = tmp_path / "b.txt"
    wrong.write_text("{}")
    assert CliRunner().invoke(cli, ["batch", str(wrong), "--dry-run"]).exit_code == 2
    no_dir = CliRunner().invoke(cli, ["batch", str(path)])
    assert no_dir.exit_code == 2
    cap = CliRunner().invoke(cli, ["batch", str(path), "-o", "x", "--max-cost", "-1"])
    assert cap.exit_code == 2 and "--max-cost" in cap.output

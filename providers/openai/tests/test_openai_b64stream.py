"""B64Splitter: base64 images decoded to files as the answer streams in, at any chunking."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from imagerouter_openai.b64stream import B64Splitter, SplitError

PAYLOAD = bytes(range(256)) * 40


def body(escaped: bool = False) -> bytes:
    b64 = base64.b64encode(PAYLOAD).decode()
    if escaped:
        b64 = b64.replace("/", "\\/")
    text = json.dumps({"created": 1, "data": [{"b64_json": "X"}, {"b64_json": "Y"}]})
    text = text.replace('"X"', f'"{b64}"').replace('"Y"', f'"{b64}"')
    return text.encode()


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 10_000])
@pytest.mark.parametrize("escaped", [False, True])
def test_any_chunking_gives_the_same_files(tmp_path: Path, chunk: int, escaped: bool) -> None:
    data = body(escaped)
    splitter = B64Splitter(tmp_path, max_image_bytes=1 << 20)
    for start in range(0, len(data), chunk):
        splitter.feed(data[start : start + chunk])
    assert splitter.complete
    skeleton = json.loads(bytes(splitter.skeleton))
    assert [item["b64_json"] for item in skeleton["data"]] == ["@file:0", "@file:1"]
    assert [Path(name).read_bytes() for name in splitter.files] == [PAYLOAD, PAYLOAD]
    splitter.discard()
    assert os.listdir(tmp_path) == []


def test_a_null_value_is_not_an_image(tmp_path: Path) -> None:
    splitter = B64Splitter(tmp_path, max_image_bytes=100)
    splitter.feed(b'{"data": [{"b64_json": null, "url": "x"}]}')
    assert splitter.files == [] and json.loads(bytes(splitter.skeleton))["data"][0]["url"] == "x"


def test_cut_off_inside_an_image_is_incomplete(tmp_path: Path) -> None:
    splitter = B64Splitter(tmp_path, max_image_bytes=1 << 20)
    splitter.feed(body()[:500])
    assert not splitter.complete
    splitter.discard()
    assert os.listdir(tmp_path) == []


def test_oversized_and_non_base64_images_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="larger"):
        B64Splitter(tmp_path, max_image_bytes=100).feed(body())
    with pytest.raises(SplitError, match="not base64"):
        B64Splitter(tmp_path, max_image_bytes=100).feed(b'{"b64_json": "ab$d"}')

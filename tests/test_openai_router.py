"""The openai backend end to end: Router -> imagerouter-openai -> its emulator over loopback
-> files, beside the two aggregators' emulators. A synchronous create is recorded in the
ledger and never polled; partial images reach the progress callback; a lost answer is never
sent twice nor failed over unless the config opts in."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagerouter import Router
from imagerouter.config import load_config
from imagerouter.emulated import Emulators
from imagerouter.errors import SubmissionUnknownError
from imagerouter.execution import Progress
from imagerouter.paths import emulated_ledger_path
from imagerouter.plugins import Plugins

from .conftest import base_config, deep_merge, fast_sleep


@pytest.fixture
def every_emulator(plugins: Plugins) -> Iterator[Emulators]:
    with Emulators.start(plugins, latency="fixed:0.02", seed=7, hang_seconds=1.0) as running:
        yield running


@pytest.fixture
def routers(every_emulator: Emulators, plugins: Plugins, tmp_path: Path) -> Iterator[Any]:
    made: list[Router] = []

    def make(config: dict[str, Any] | None = None) -> Router:
        data = deep_merge(base_config(tmp_path), {"providers": {"openai": {"timeout": 5}}})
        data = deep_merge(data, config or {})
        cfg = every_emulator.configure(load_config(data, known_providers=plugins.providers()))
        router = Router(cfg, plugins=plugins, sleep=fast_sleep)
        made.append(router)
        return router

    yield make
    for router in made:
        router.close()


def ledger_rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    path = emulated_ledger_path(tmp_path / "ledger.db")
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_low_quality_is_served_by_openai_at_its_token_price(
    routers: Any, every_emulator: Emulators, tmp_path: Path
) -> None:
    # low 1536x1024: 158 output tokens at $30/M, less than a cent: the cheapest of the three.
    result = routers().generate("a red fox", quality="low", size="1536x1024")
    assert result.provider == "openai"
    assert every_emulator.created() == {"openai": 1, "runapi": 0, "runflow": 0}
    (image,) = result.images
    assert hashlib.sha256(image.path.read_bytes()).hexdigest() == image.sha256
    with Image.open(image.path) as opened:
        assert opened.size == (1536, 1024)
    assert result.billed_usd == every_emulator.apps["openai"].counters.billed_usd
    assert result.cost_usd < Decimal("0.006")
    rows = ledger_rows(tmp_path, "SELECT provider, state, billed_usd FROM tasks")
    assert [(provider, state) for provider, state, _ in rows] == [("openai", "collected")]
    assert list(image.path.parent.glob(".openai-*")) == []  # no temp file left behind


def test_edit_with_a_local_input_goes_out_as_multipart(
    routers: Any, every_emulator: Emulators, input_png: Path
) -> None:
    # An input image adds its (assumed) input tokens: Runflow's low edit is cheaper here.
    result = routers().edit(
        "add a hat", [input_png], quality="low", size="1024x1024", providers=["openai"]
    )
    assert result.provider == "openai" and len(result.images) == 1
    assert every_emulator.apps["openai"].counters.created == 1


def test_partial_images_reach_the_progress_callback(routers: Any) -> None:
    seen: list[Progress] = []
    router = routers()
    # `partial_images` is the request field the gateway fills from OpenAI's own field.
    result = router.generate(
        "a red fox",
        progress=seen.append,
        quality="low",
        size="1024x1024",
        partial_images=2,
        providers=["openai"],  # each partial adds 100 output tokens: Runflow is cheaper
    )
    assert result.provider == "openai"
    partials = [note.partial_image for note in seen if note.partial_image]
    # The seeded emulator sends both here (OpenAI may send fewer, which is allowed).
    assert 1 <= len(partials) <= 2
    assert any(note.state == "succeeded" for note in seen)
    for data in partials:
        assert data.startswith(b"\x89PNG")


def test_a_lost_answer_is_not_sent_again_nor_failed_over(
    routers: Any, every_emulator: Emulators, tmp_path: Path
) -> None:
    every_emulator.apps["openai"].options.faults.add("create:reset_after_send")
    with pytest.raises(SubmissionUnknownError) as caught:
        routers().generate("a red fox", quality="low", size="1536x1024")
    assert caught.value.accepted == "unknown"
    # Made (and billed) once at OpenAI; nothing else was tried.
    assert every_emulator.created() == {"openai": 1, "runapi": 0, "runflow": 0}
    rows = ledger_rows(tmp_path, "SELECT provider, state, possibly_billed FROM tasks")
    assert rows == [("openai", "unknown", 1)]


def test_failover_after_a_lost_answer_only_when_opted_in(
    routers: Any, every_emulator: Emulators
) -> None:
    every_emulator.apps["openai"].options.faults.add("create:reset_after_send")
    router = routers({"routing": {"on_unknown_submission": "failover"}})
    result = router.generate("a red fox", quality="low", size="1536x1024")
    assert result.provider != "openai"
    assert every_emulator.apps["openai"].counters.created == 1


def test_a_503_fails_over_at_no_cost(routers: Any, every_emulator: Emulators) -> None:
    every_emulator.apps["openai"].options.faults.add("create:503")
    result = routers().generate("a red fox", quality="low", size="1536x1024")
    assert result.provider == "runflow"
    assert every_emulator.apps["openai"].counters.created == 0


def test_without_a_key_openai_is_off_but_still_quoted(plugins: Plugins, tmp_path: Path) -> None:
    router = Router(load_config(base_config(tmp_path)), plugins=plugins)
    try:
        offers = router.quote("a red fox", quality="medium")
    finally:
        router.close()
    (openai,) = [offer for offer in offers if offer.provider == "openai"]
    assert not openai.eligible and "OPENAI_API_KEY" in (openai.reason or "")
    assert openai.per_image_usd is not None


# -- fault cells: the synchronous backend never pays twice ----------------------------------

# rule -> (served elsewhere?, images OpenAI made): a fault before the job exists fails over
# for free; one after it (or one that cannot tell) is possibly billed and stops there.
CELLS = {
    "create:429": (True, 0),
    "create:401": (True, 0),
    "create:503": (True, 0),
    "create:reset": (False, 0),  # the client cannot tell it from a lost answer
    "create:reset_after_send": (False, 1),
    "create:created_500": (False, 1),
    "create:malformed": (False, 1),
    "create:hang": (False, 1),
    "create:task_failed": (False, 0),  # a content refusal is never failed over
}


@pytest.mark.parametrize("rule", sorted(CELLS))
def test_fault_cell(routers: Any, every_emulator: Emulators, tmp_path: Path, rule: str) -> None:
    served_elsewhere, made = CELLS[rule]
    every_emulator.apps["openai"].options.faults.add(rule)
    router = routers({"providers": {"openai": {"timeout": 0.4}}})
    try:
        result = router.generate("a red fox", quality="low", size="1536x1024")
    except Exception as exc:
        assert not served_elsewhere, f"{rule}: {exc!r}"
        key = every_emulator.keys["openai"]
        assert key not in str(exc)
    else:
        assert served_elsewhere, rule
        assert result.provider == "runflow"
    counters = every_emulator.apps["openai"].counters
    assert counters.created == made
    assert every_emulator.created()["runapi"] == 0
    assert every_emulator.created()["runflow"] == (1 if served_elsewhere else 0)
    # Every create OpenAI made has its ledger task, and none is forgotten as "not sent".
    rows = ledger_rows(tmp_path, "SELECT provider, state FROM tasks WHERE provider = 'openai'")
    assert len(rows) == 1
    if made:
        assert rows[0][1] != "not_sent"

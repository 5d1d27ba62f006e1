"""`imagerouter compare` (the price matrix, --json, --plot) and `spend --plot`: the charts are
PNG files that open, have the promised size and show what they should."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from imagerouter.cli import cli
from imagerouter.emulated import Emulators
from imagerouter.plotting import (
    _COLOURS,
    CHART_SIZE,
    PriceGroup,
    price_chart,
    spend_by_day,
    spend_chart,
)

from .conftest import MakeRouter

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli, list(args))
    return result.exit_code, result.output


def colours(path: Path) -> set[tuple[int, int, int]]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == CHART_SIZE
        rgb = image.convert("RGB")
        found = rgb.getcolors(CHART_SIZE[0] * CHART_SIZE[1]) or []
    return {colour for _count, colour in found}


def has_colour(found: set[tuple[int, int, int]], hex_colour: str) -> bool:
    wanted = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return wanted in found


def test_compare_json_is_the_full_matrix_with_the_cheapest_marked() -> None:
    code, out = invoke(
        "compare",
        "--json",
        "--model",
        "gpt-image-2",
        "--model",
        "gpt-image-1.5",
        "--provider",
        "runapi",
        "--provider",
        "runflow",
    )
    assert code == 0, out
    data = json.loads(out)
    assert data["providers"] == ["runapi", "runflow"]
    rows = data["rows"]
    assert len(rows) == 2 * 4 * 3  # models x (default, low, medium, high) x sizes
    cell = {(r["model"], r["quality"], r["size"]): r for r in rows}
    low = cell[("gpt-image-2", "low", "1024x1024")]
    assert low["prices"] == {"runapi": None, "runflow": "0.009"}
    assert low["cheapest"] == ["runflow"] and "quality" in low["reasons"]["runapi"]
    default = cell[("gpt-image-2", None, "1024x1024")]
    assert default["prices"] == {"runapi": "0.06", "runflow": "0.133"}
    assert default["cheapest"] == ["runapi"]
    for row in rows:
        known = [Decimal(p) for p in row["prices"].values() if p is not None]
        if known:
            assert all(Decimal(row["prices"][name]) == min(known) for name in row["cheapest"])


def test_compare_table_marks_the_cheapest_and_filters() -> None:
    code, out = invoke(
        "compare",
        "--model",
        "gpt-image-1.5",
        "--quality",
        "medium",
        "--size",
        "1024x1024",
        "--provider",
        "runapi",
        "--provider",
        "runflow",
    )
    assert code == 0, out
    assert "$0.034 *" in out and "gpt-image-2" not in out


def test_compare_bad_model_or_provider_is_bad_input() -> None:
    code, out = invoke("compare", "--model", "dall-e-9")
    assert code == 2 and "dall-e-9" in out
    code, out = invoke("compare", "--provider", "nope")
    assert code == 2 and "nope" in out


def test_compare_plot_writes_a_chart(tmp_path: Path) -> None:
    path = tmp_path / "charts" / "compare.png"
    code, out = invoke(
        "compare", "--plot", str(path), "--json", "--provider", "runapi", "--provider", "runflow"
    )
    assert code == 0, out
    assert json.loads(out)["plot"] == str(path)
    found = colours(path)
    assert len(found) > 20  # text, bars, grid: not a blank canvas
    assert has_colour(found, _COLOURS[0]) and has_colour(found, _COLOURS[1])  # both providers


def test_price_chart_draws_only_offered_bars(tmp_path: Path) -> None:
    groups = [PriceGroup("only-one", {"a": Decimal("0.1"), "b": None}, frozenset({"a"}))]
    found = colours(price_chart(groups, tmp_path / "one.png"))
    assert has_colour(found, _COLOURS[0]) and not has_colour(found, _COLOURS[1])


def test_spend_plot_draws_spend_per_day_by_provider(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    router = make_router()
    router.generate("a lighthouse", size="1024x1024", providers=("runapi",))
    router.generate("a lighthouse", quality="low", providers=("runflow",))
    assert router.config.ledger.path is not None
    config = tmp_path / "c.yaml"
    # `spend` reads the ledger file the router wrote (the emulated twin of this path).
    config.write_text(f"ledger:\n  path: {tmp_path / 'ledger.db'}\n")
    path = tmp_path / "spend.png"
    code, out = invoke("spend", "--emulated", "--config", str(config), "--plot", str(path))
    assert code == 0, out
    found = colours(path)
    assert has_colour(found, _COLOURS[0]) and has_colour(found, _COLOURS[1])
    assert router.ledger is not None
    (day,) = spend_by_day(router.ledger).values()
    assert day == {"runapi": Decimal("0.06"), "runflow": Decimal("0.009")}


def test_spend_chart_with_nothing_spent_still_draws(tmp_path: Path) -> None:
    found = colours(spend_chart({}, tmp_path / "empty.png"))
    assert len(found) > 2  # axes and the "nothing was spent" text


def test_missing_matplotlib_is_one_clear_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    path = tmp_path / "c.png"
    for args in (("compare", "--plot", str(path)), ("spend", "--plot", str(path))):
        code, out = invoke(*args)
        assert code == 2, out
        assert "matplotlib" in out and "imagerouter-core[plot]" in out
        assert len(out.strip().splitlines()) == 1
    assert not path.exists()


def test_plot_must_be_a_png(tmp_path: Path) -> None:
    code, out = invoke("compare", "--plot", str(tmp_path / "c.jpg"))
    assert code == 2 and "PNG" in out

"""The opt-in result cache: a repeat is answered from the ledger's images at $0, no create."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagerouter.cache import cache_fingerprint, parse_ttl
from imagerouter.cli import cli
from imagerouter.emulated import Emulators
from imagerouter.errors import ConfigError
from imagerouter.request import ImageRequest

from .conftest import MakeRouter, base_config
from .test_gateway import ServeGateway, serve_gateway

__all__ = ["serve_gateway"]  # the fixture, imported for this module

CACHE_ON = {"cache": {"enabled": True, "ttl": "7d"}}


def total(emulators: Emulators) -> int:
    return sum(emulators.created().values())


def test_a_cached_repeat_makes_no_create(make_router: MakeRouter, emulators: Emulators) -> None:
    router = make_router(CACHE_ON)
    first = router.generate("a lighthouse at dusk", quality="low")
    assert not first.cached and first.cost_usd > 0
    assert total(emulators) == 1
    again = router.generate("a lighthouse at dusk", quality="low")
    assert total(emulators) == 1  # no second create
    assert again.cached and again.cost_usd == Decimal(0) and again.billed_usd == Decimal(0)
    assert again.to_dict()["cached"] is True
    assert [i.sha256 for i in again.images] == [i.sha256 for i in first.images]
    assert again.request_id != first.request_id
    assert router.ledger is not None
    with router.ledger.reading() as conn:
        row = conn.execute(
            "SELECT cached, cache_of, cost_usd, status FROM requests WHERE id = ?",
            (again.request_id,),
        ).fetchone()
    assert (row["cached"], row["cache_of"], row["status"]) == (1, first.request_id, "served")
    assert Decimal(row["cost_usd"]) == 0


def test_cache_is_opt_in_and_can_be_refused(make_router: MakeRouter, emulators: Emulators) -> None:
    plain = make_router()
    plain.generate("a fox", quality="low")
    assert not plain.generate("a fox", quality="low").cached
    assert total(emulators) == 2
    cached = make_router(CACHE_ON)
    cached.generate("an owl", quality="low")
    assert not cached.generate("an owl", quality="low", cache=False).cached
    assert total(emulators) == 4
    # Per request on, with the config off.
    plain.generate("a cat", quality="low", cache=True)
    assert plain.generate("a cat", quality="low", cache=True).cached
    assert total(emulators) == 5


def test_a_missing_file_is_a_miss(make_router: MakeRouter, emulators: Emulators) -> None:
    router = make_router(CACHE_ON)
    first = router.generate("a boat", quality="low")
    first.images[0].path.unlink()
    again = router.generate("a boat", quality="low")
    assert not again.cached and total(emulators) == 2
    assert again.images[0].path.exists()


def test_another_output_dir_gets_a_copy(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    router = make_router(CACHE_ON)
    first = router.generate("a tree", quality="low")
    again = router.generate("a tree", quality="low", output_dir=tmp_path / "elsewhere")
    assert again.cached and total(emulators) == 1
    (image,) = again.images
    assert image.path.parent == tmp_path / "elsewhere" and image.path.exists()
    assert image.sha256 == first.images[0].sha256


def test_the_fingerprint_is_canonical() -> None:
    one = ImageRequest.build(prompt="x", size="1024x1024")
    # What only routes a request (providers, a cost cap) is not part of it.
    same = ImageRequest.build(
        prompt=" x ", size="1024X1024", max_cost_usd=1, providers=("runflow",), model="gpt-image-2"
    )
    other = ImageRequest.build(prompt="x", size="1536x1024")
    assert cache_fingerprint(one) == cache_fingerprint(same)
    assert cache_fingerprint(one) != cache_fingerprint(other)
    assert cache_fingerprint(one, tier="draft") != cache_fingerprint(one)


def test_ttl_forms(make_router: MakeRouter) -> None:
    assert parse_ttl("7d") == 7 * 86400 and parse_ttl("30m") == 1800 and parse_ttl(45) == 45
    with pytest.raises(ValueError):
        parse_ttl("soon")
    with pytest.raises(ConfigError):
        make_router({"cache": {"enabled": True, "ttl": "soon"}})


def test_cli_json_says_cached_and_no_cache_refuses(emulators: Emulators, tmp_path: Path) -> None:
    config = base_config(tmp_path)
    for name in ("runapi", "runflow"):
        config["providers"][name].update(base_url=emulators.url(name), api_key=emulators.keys[name])
    config.update(CACHE_ON)
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(config))
    runner = CliRunner()
    args = ["generate", "a kite", "--quality", "low", "--config", str(path), "--json"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(cli, args)
    assert json.loads(second.output)["cached"] is True
    assert total(emulators) == 1
    third = runner.invoke(cli, [*args, "--no-cache"])
    assert json.loads(third.output)["cached"] is False
    assert total(emulators) == 2
    with sqlite3.connect(config["ledger"]["path"]) as conn:
        cached = conn.execute("SELECT count(*) FROM requests WHERE cached = 1").fetchone()[0]
    assert cached == 1


def test_gateway_says_cache_hit(serve_gateway: ServeGateway, emulators: Emulators) -> None:
    served = serve_gateway(CACHE_ON)
    client = served.client()
    first = client.images.with_raw_response.generate(prompt="a moon", quality="low")
    assert "x-imagerouter-cache" not in first.headers
    again = client.images.with_raw_response.generate(prompt="a moon", quality="low")
    assert again.headers["x-imagerouter-cache"] == "hit"
    assert Decimal(again.headers["x-imagerouter-cost-usd"]) == 0
    assert total(emulators) == 1

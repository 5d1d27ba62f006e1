"""Per-key budgets and rate limits on the gateway (issue 12), driven by the official `openai`
client, sync and async, over loopback to the gateway on the provider emulators: a key over
its budget gets 429 `insufficient_quota` with no paid create, concurrent requests of one key
never overshoot it, a key over its rate gets 429 `rate_limit_exceeded` with Retry-After, and
`imagerouter spend --by key` reports by key name, never the key."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner

from imagerouter.emulated import Emulators
from imagerouter.gateway.key_limits import KeyLimits

from .test_gateway import Served, ServeGateway, serve_gateway

__all__ = ["serve_gateway"]

TEAM_A = "team-a-secret-key-0001"
TEAM_B = "team-b-secret-key-0002"
PLAIN = "plain-secret-key-0003"
PER_IMAGE = Decimal("0.06")  # RunAPI gpt-image-2 at 1k, the cheapest offer on the emulators


def keyed(serve: ServeGateway, team_a: dict[str, Any]) -> Served:
    keys: list[Any] = [
        PLAIN,
        {"key": TEAM_A, "name": "team-a", **team_a},
        {"key": TEAM_B, "name": "team-b"},
    ]
    return serve({"gateway": {"api_keys": keys}}, key=PLAIN)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_over_its_budget_gets_insufficient_quota_and_nothing_is_paid(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = keyed(serve_gateway, {"daily_usd": "0.05", "monthly_usd": "100"})
    with pytest.raises(openai.RateLimitError) as caught:
        served.client(api_key=TEAM_A, max_retries=2).images.generate(prompt="a fox")
    assert (caught.value.type, caught.value.code) == ("insufficient_quota", "insufficient_quota")
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "team-a" in str(caught.value) and TEAM_A not in str(caught.value)
    assert emulators.created() == {"runapi": 0, "runflow": 0}
    # Another key's requests are not held by team-a's budget.
    assert served.client(api_key=TEAM_B).images.generate(prompt="a fox").data
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_async_client_over_budget(serve_gateway: ServeGateway, emulators: Emulators) -> None:
    served = keyed(serve_gateway, {"monthly_usd": "0"})

    async def main() -> None:
        async with openai.AsyncOpenAI(
            base_url=f"{served.url}/v1", api_key=TEAM_A, max_retries=0
        ) as client:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.images.generate(prompt="a fox", model="gpt-image-2")
            assert caught.value.code == "insufficient_quota"

    asyncio.run(main())
    assert emulators.created() == {"runapi": 0, "runflow": 0}


def test_concurrent_requests_of_one_key_never_overshoot_its_budget(
    serve_gateway: ServeGateway, emulators: Emulators, tmp_path: Path
) -> None:
    served = keyed(serve_gateway, {"daily_usd": str(3 * PER_IMAGE)})

    async def main() -> list[Any]:
        async with openai.AsyncOpenAI(
            base_url=f"{served.url}/v1", api_key=TEAM_A, max_retries=0, timeout=60
        ) as client:
            calls = [client.images.generate(prompt=f"a fox {i}") for i in range(8)]
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(main())
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    served_ok = [o for o in outcomes if not isinstance(o, BaseException)]
    assert (len(served_ok), len(refused)) == (3, 5), outcomes
    assert {o.code for o in refused} == {"insufficient_quota"}
    assert emulators.created() == {"runapi": 3, "runflow": 0}
    ledger = served.router.ledger
    assert ledger is not None
    by_key = {row.key: row for row in ledger.spend(by="key")}
    assert by_key["team-a"].quoted_usd == 3 * PER_IMAGE
    assert (by_key["team-a"].requests, by_key["team-a"].served) == (8, 3)
    assert ledger.committed_usd(None, scope="key:team-a") == 3 * PER_IMAGE
    # A plain key's requests count under its positional name.
    served.client().images.generate(prompt="a plain fox")
    by_key = {row.key: row for row in ledger.spend(by="key")}
    assert by_key["key-1"].quoted_usd == PER_IMAGE

    # `imagerouter spend --by key` (text and --json) names keys, never shows them.
    config = tmp_path / "spend.yaml"
    config.write_text(f"ledger:\n  path: {tmp_path / 'ledger.db'}\n", encoding="utf-8")
    from imagerouter.cli import cli  # here: a CLI import problem fails only this test

    runner = CliRunner()
    text = runner.invoke(cli, ["spend", "--by", "key", "--emulated", "--config", str(config)])
    assert text.exit_code == 0, text.output
    assert "team-a" in text.output and "key-1" in text.output
    as_json = runner.invoke(
        cli, ["spend", "--by", "key", "--emulated", "--json", "--config", str(config)]
    )
    assert as_json.exit_code == 0, as_json.output
    rows = {row["key"]: row for row in json.loads(as_json.output)["rows"]}
    assert json.loads(as_json.output)["by"] == "key"
    assert Decimal(rows["team-a"]["quoted_usd"]) == 3 * PER_IMAGE
    assert rows["team-a"]["served"] == 3
    for secret in (TEAM_A, TEAM_B, PLAIN):
        assert secret not in text.output + as_json.output


def test_a_key_over_its_rate_gets_rate_limit_exceeded_with_retry_after(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = keyed(serve_gateway, {"rpm": 2})
    clock = FakeClock()
    served.gateway.key_limits = KeyLimits(served.gateway.settings.api_keys, clock=clock)
    client = served.client(api_key=TEAM_A, max_retries=0)
    client.images.generate(prompt="one")
    clock.now += 15
    client.images.generate(prompt="two")
    with pytest.raises(openai.RateLimitError) as caught:
        client.images.generate(prompt="three")
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "45"  # the first leaves at +60 s
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "2"
    assert emulators.created() == {"runapi": 2, "runflow": 0}
    # Other keys have their own (here: no) rate; the refused call was not counted.
    served.client(api_key=TEAM_B, max_retries=0).images.generate(prompt="b")
    clock.now += 45
    client.images.generate(prompt="three again")
    with pytest.raises(openai.RateLimitError):
        client.images.generate(prompt="four")
    # Reading jobs and models is not a paid call and never counts.
    assert client.models.list().data
    assert emulators.created() == {"runapi": 4, "runflow": 0}


def test_async_client_over_rate(serve_gateway: ServeGateway, emulators: Emulators) -> None:
    served = keyed(serve_gateway, {"rpm": 1})
    served.gateway.key_limits = KeyLimits(served.gateway.settings.api_keys, clock=FakeClock())

    async def main() -> None:
        async with openai.AsyncOpenAI(
            base_url=f"{served.url}/v1", api_key=TEAM_A, max_retries=0
        ) as client:
            await client.images.generate(prompt="one")
            with pytest.raises(openai.RateLimitError) as caught:
                await client.images.generate(prompt="two")
            assert caught.value.code == "rate_limit_exceeded"
            assert caught.value.response.headers["retry-after"] == "60"

    asyncio.run(main())
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_a_wrong_key_is_still_a_401(serve_gateway: ServeGateway, emulators: Emulators) -> None:
    served = keyed(serve_gateway, {"rpm": 1})
    with pytest.raises(openai.AuthenticationError):
        served.client(api_key="not-a-key-at-all", max_retries=0).images.generate(prompt="x")
    assert emulators.created() == {"runapi": 0, "runflow": 0}


def test_a_streamed_request_over_its_key_budget_is_a_429_before_the_stream(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = keyed(serve_gateway, {"daily_usd": str(PER_IMAGE)})
    client = served.client(api_key=TEAM_A, max_retries=0)
    events = list(client.images.generate(prompt="a fox", model="gpt-image-2", stream=True))
    assert events and events[-1].type == "image_generation.completed"
    with pytest.raises(openai.RateLimitError) as caught:
        client.images.generate(prompt="a fox", model="gpt-image-2", stream=True)
    assert caught.value.code == "insufficient_quota"
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_a_job_of_a_key_over_its_budget_fails_with_insufficient_quota(
    serve_gateway: ServeGateway, emulators: Emulators
) -> None:
    served = keyed(serve_gateway, {"daily_usd": "0.01"})
    served.key = TEAM_A
    with served.http() as http:
        created = http.post("/v1/images/jobs", json={"prompt": "a fox"})
        assert created.status_code == 202
        job_id = created.json()["id"]
        for _ in range(1000):  # the reservation is refused before any paid call: it ends soon
            body = http.get(f"/v1/images/jobs/{job_id}").json()
            if body["status"] not in ("queued", "running"):
                break
    assert body["status"] == "failed" and body["status_code"] == 429
    assert body["error"]["code"] == "insufficient_quota"
    assert emulators.created() == {"runapi": 0, "runflow": 0}

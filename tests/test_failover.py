"""Safe routing, rule by rule, against both emulators over loopback: who served, and how many
paid creates each emulator counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from imagerouter import (
    BudgetExceededError,
    InvalidRequestError,
    JobTimedOutError,
    SubmissionUnknownError,
)
from imagerouter.emulated import Emulators
from imagerouter.health import BackendState

from .conftest import MakeRouter


def fault(emulators: Emulators, provider: str, rule: str) -> None:
    emulators.apps[provider].options.faults.add(rule)


# gpt-image-1.5 medium 1:1: Runflow $0.034 first, RunAPI $0.04 second.
FIRST_RUNFLOW = {"model": "gpt-image-1.5", "quality": "medium"}


@pytest.mark.parametrize("kind", ["429", "402", "401", "503"])
def test_refused_create_moves_to_the_other_provider(
    make_router: MakeRouter, emulators: Emulators, kind: str
) -> None:
    fault(emulators, "runapi", f"create:{kind}@1")
    router = make_router()
    result = router.generate("a red fox")  # RunAPI first ($0.06 < $0.133)
    assert result.provider == "runflow"
    assert emulators.created() == {"runapi": 0, "runflow": 1}
    assert [a.accepted for a in result.attempts] == ["no", "yes"]


def test_refused_connection_moves_on(make_router: MakeRouter, emulators: Emulators) -> None:
    router = make_router(base_urls={"runapi": "http://127.0.0.1:9"})  # nothing listens there
    result = router.generate("a red fox")
    assert result.provider == "runflow"
    assert result.attempts[0].error_type == "ConnectionFailedError"
    assert emulators.created() == {"runapi": 0, "runflow": 1}


def test_failed_task_fails_over_without_extra_paid_create(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runapi", "create:task_failed@1")
    router = make_router()
    result = router.generate("a red fox")
    assert result.provider == "runflow"
    # RunAPI accepted one task that failed (not billed); Runflow one run.
    assert emulators.created() == {"runapi": 1, "runflow": 1}
    assert result.attempts[0].error_type == "JobFailedError"


def test_poll_glitches_never_resubmit(make_router: MakeRouter, emulators: Emulators) -> None:
    fault(emulators, "runapi", "poll:500@0.5")
    fault(emulators, "runapi", "poll:reset@0.2")
    router = make_router()
    result = router.generate("a red fox")
    assert result.provider == "runapi"
    assert emulators.created() == {"runapi": 1, "runflow": 0}


@pytest.mark.parametrize("kind", ["reset_after_send", "created_500", "hang"])
def test_unknown_runapi_create_is_replayed_with_the_same_key(
    make_router: MakeRouter, emulators: Emulators, kind: str
) -> None:
    fault(emulators, "runapi", f"create:seq={kind},ok")
    router = make_router({"providers": {"runapi": {"timeout": 0.5}}})
    result = router.generate("a red fox")
    assert result.provider == "runapi"
    counters = emulators.apps["runapi"].counters
    assert counters.created == 1 and counters.replayed >= 1
    assert emulators.created()["runflow"] == 0


def test_unknown_runflow_create_is_reconciled_by_client_ref(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runflow", "create:seq=reset_after_send,ok")
    router = make_router()
    result = router.generate("a red fox", **FIRST_RUNFLOW)
    assert result.provider == "runflow"
    assert emulators.created() == {"runapi": 0, "runflow": 1}


def test_lost_runflow_create_that_made_nothing_fails_over(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runflow", "create:seq=reset,ok")
    router = make_router()
    result = router.generate("a red fox", **FIRST_RUNFLOW)
    assert result.provider == "runapi"
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_unsettled_runflow_create_stops_with_a_clear_error(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runflow", "create:seq=reset_after_send,ok")
    fault(emulators, "runflow", "find:500@1")
    router = make_router()
    with pytest.raises(SubmissionUnknownError) as caught:
        router.generate("a red fox", **FIRST_RUNFLOW)
    message = str(caught.value)
    assert "runflow" in message and "possibly billed" in message and "client_ref" in message
    assert emulators.created() == {"runapi": 0, "runflow": 1}


def test_failover_on_unknown_is_an_explicit_opt_in_and_recorded(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runflow", "create:seq=reset_after_send,ok")
    fault(emulators, "runflow", "find:500@1")
    router = make_router({"routing": {"on_unknown_submission": "failover"}})
    result = router.generate("a red fox", **FIRST_RUNFLOW)
    assert result.provider == "runapi"
    assert emulators.created() == {"runapi": 1, "runflow": 1}
    assert router.ledger is not None
    detail = router.ledger.request_detail(result.request_id)
    attempts = detail["attempts"]
    assert any(a.get("accepts_double_charge") for a in attempts)


def test_request_errors_do_not_fail_over_or_hurt_health(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runapi", "create:422@1")
    router = make_router()
    with pytest.raises(InvalidRequestError):
        router.generate("a red fox")
    assert emulators.created() == {"runapi": 0, "runflow": 0}
    assert router.health.state(("runapi", "gpt-image-2", "generate")) == BackendState.HEALTHY


def test_stuck_job_times_out_without_paying_twice(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runapi", "create:task_stuck@1")
    router = make_router({"providers": {"runapi": {"poll_deadline": 0.3}}})
    with pytest.raises(JobTimedOutError) as caught:
        router.generate("a red fox")
    assert "resume" in str(caught.value)
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_hedge_on_deadline_is_opt_in_and_budgeted(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runapi", "create:task_stuck@1")
    router = make_router(
        {"providers": {"runapi": {"poll_deadline": 0.3}}, "routing": {"on_deadline": "hedge"}}
    )
    result = router.generate("a red fox")
    assert result.provider == "runflow"
    assert emulators.created() == {"runapi": 1, "runflow": 1}


def test_repeated_failures_eject_a_backend(make_router: MakeRouter, emulators: Emulators) -> None:
    fault(emulators, "runapi", "create:503@1")
    router = make_router()
    for _ in range(3):
        assert router.generate("a red fox").provider == "runflow"
    key = ("runapi", "gpt-image-2", "generate")
    assert router.health.state(key) == BackendState.EJECTED
    seen = emulators.apps["runapi"].counters.faults.get("create:503", 0)
    assert router.generate("a red fox").provider == "runflow"
    # Ejected: the fourth request did not even try RunAPI.
    assert emulators.apps["runapi"].counters.faults.get("create:503", 0) == seen


async def test_concurrent_requests_never_overshoot_the_daily_budget(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    router = make_router({"budget": {"daily_usd": "0.30"}})  # five $0.06 images
    results = await asyncio.gather(
        *[router.agenerate(f"image {i}") for i in range(10)], return_exceptions=True
    )
    served = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    assert len(served) == 5 and len(refused) == 5
    assert sum(emulators.created().values()) == 5
    await router.aclose()


def test_max_cost_per_request_is_checked_before_any_call(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    router = make_router()
    offers = router.quote("x", n=4, max_cost_usd="0.10")
    assert all(not o.eligible for o in offers if o.total_usd is not None and o.total_usd > 0.1)
    with pytest.raises(Exception, match="max_cost_usd"):
        router.generate("a red fox", n=4, quality="high", max_cost_usd="0.10")
    assert sum(emulators.created().values()) == 0


def test_download_glitches_are_retried_not_repaid(
    make_router: MakeRouter, emulators: Emulators, tmp_path: Path
) -> None:
    fault(emulators, "runapi", "download:seq=download_404,truncated,ok")
    router = make_router()
    result = router.generate("a red fox")
    assert result.provider == "runapi" and result.images[0].path.exists()
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_rate_limited_only_backend_waits_for_retry_after(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runapi", "create:seq=429,ok")
    waits: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(min(seconds, 0.005))

    router = make_router(sleep=recording_sleep)
    result = router.generate("a red fox", providers=["runapi"])
    assert result.provider == "runapi"
    assert [a.error_type for a in result.attempts] == ["RateLimitedError", None]
    assert any(w >= 0.5 for w in waits)  # it waited out the 1 s Retry-After before retrying
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_failover_policy_still_replays_runapi_first(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runapi", "create:seq=reset_after_send,ok")
    router = make_router({"routing": {"on_unknown_submission": "failover"}})
    result = router.generate("a red fox")
    assert result.provider == "runapi"  # the replay settled it: no failover, no double charge
    assert emulators.created() == {"runapi": 1, "runflow": 0}


def test_fail_policy_stops_at_the_first_lost_answer(
    make_router: MakeRouter, emulators: Emulators
) -> None:
    fault(emulators, "runapi", "create:seq=reset_after_send,ok")
    router = make_router({"routing": {"on_unknown_submission": "fail"}})
    with pytest.raises(SubmissionUnknownError):
        router.generate("a red fox")
    assert emulators.created() == {"runapi": 1, "runflow": 0}

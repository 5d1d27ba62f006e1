"""Money verdicts for errors on a job the provider already accepted."""

from __future__ import annotations

import pytest

from imagerouter.errors import (
    AuthenticationError,
    ConnectionFailedError,
    MalformedResponseError,
    ProviderError,
    ProviderUnavailableError,
)
from imagerouter.failures import classify


@pytest.mark.parametrize(
    "kind",
    [MalformedResponseError, ConnectionFailedError, ProviderUnavailableError, AuthenticationError],
)
def test_a_job_given_up_after_acceptance_counts_as_possibly_billed(
    kind: type[ProviderError],
) -> None:
    # Its polls kept failing, so we stopped watching; the job runs on and may be billed, so the
    # budget must keep its cost (the fault matrix saw billed > spend without this).
    verdict = classify(kind("polls failed", provider="p", accepted="yes", task_id="t-1"))
    assert verdict.possibly_billed
    assert not verdict.failover


@pytest.mark.parametrize("kind", [MalformedResponseError, ConnectionFailedError])
def test_a_refusal_before_acceptance_is_not_billed(kind: type[ProviderError]) -> None:
    verdict = classify(kind("no job", provider="p", accepted="no"))
    assert not verdict.possibly_billed
    assert verdict.failover

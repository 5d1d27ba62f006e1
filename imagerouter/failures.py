"""Classify a failed attempt before acting on it.

Every failure answers three questions (docs/failures.md has the table):
1. did the provider accept the job (`accepted`: yes / no / unknown)?
2. is it the provider's fault or the request's (`health`: what the breaker records)?
3. may the router move on to another offer without risking a second charge (`failover`)?
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import (
    Accepted,
    AuthenticationError,
    ConnectionFailedError,
    DownloadFailedError,
    ImageRouterError,
    InsufficientCreditsError,
    InvalidRequestError,
    JobFailedError,
    JobTimedOutError,
    MalformedResponseError,
    MissingApiKeyError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    SubmissionUnknownError,
)
from .health import FailureKind

__all__ = ["Verdict", "classify"]


@dataclass(frozen=True)
class Verdict:
    accepted: Accepted
    health: FailureKind
    failover: bool
    # True when the job may exist and be billed although we have no result for it.
    possibly_billed: bool = False
    retry_after: float | None = None


_PROMPT_FIELDS = {"prompt", "content", "content_policy"}


def classify(exc: BaseException) -> Verdict:
    """The default verdict for an error raised by an attempt.

    `SubmissionUnknownError` reaching here means reconciliation could not settle it; the
    router applies `routing.on_unknown_submission` on top of this verdict, and
    `routing.on_deadline` on top of a `JobTimedOutError`.
    """
    if isinstance(exc, MissingApiKeyError):
        return Verdict("no", FailureKind.AUTH, failover=True)
    if not isinstance(exc, ProviderError):
        if isinstance(exc, ImageRouterError):
            return Verdict("no", FailureKind.REQUEST, failover=False)
        # An unexpected bug in a plugin: nothing is known about the job.
        return Verdict("unknown", FailureKind.TRANSIENT, failover=False, possibly_billed=True)
    accepted = exc.accepted
    # A job the provider accepted and we then stopped watching (its polls kept failing) runs
    # on and may be billed: its cost counts as spent until `resume` learns the outcome.
    if isinstance(exc, AuthenticationError):
        return Verdict(
            accepted, FailureKind.AUTH, failover=accepted == "no", possibly_billed=accepted == "yes"
        )
    if isinstance(exc, InsufficientCreditsError):
        return Verdict(accepted, FailureKind.CREDIT, failover=accepted == "no")
    if isinstance(exc, RateLimitedError):
        return Verdict(
            accepted,
            FailureKind.RATE_LIMITED,
            failover=accepted == "no",
            retry_after=exc.retry_after,
        )
    if isinstance(exc, InvalidRequestError):
        return Verdict(accepted, FailureKind.REQUEST, failover=False)
    if isinstance(exc, SubmissionUnknownError):
        return Verdict("unknown", FailureKind.TRANSIENT, failover=False, possibly_billed=True)
    if isinstance(exc, ProviderUnavailableError | ConnectionFailedError | MalformedResponseError):
        if accepted == "no":
            return Verdict("no", FailureKind.TRANSIENT, failover=True)
        return Verdict(accepted, FailureKind.TRANSIENT, failover=False, possibly_billed=True)
    if isinstance(exc, JobFailedError):
        # Accepted, then failed: neither provider bills a failed generation.
        return Verdict("yes", FailureKind.TRANSIENT, failover=True)
    if isinstance(exc, JobTimedOutError):
        return Verdict("yes", FailureKind.TRANSIENT, failover=False, possibly_billed=True)
    if isinstance(exc, DownloadFailedError):
        # The job is done and billed; another provider would bill again.
        return Verdict("yes", FailureKind.TRANSIENT, failover=False)
    return Verdict(accepted, FailureKind.TRANSIENT, failover=accepted == "no")


def refusal_may_differ(exc: BaseException, same_provider: bool) -> bool:
    """A request refusal is worth trying elsewhere only when another provider would get
    different parameters and the refusal was not about the prompt itself."""
    if not isinstance(exc, InvalidRequestError) or same_provider or not exc.fields:
        return False  # without field details there is no telling what another would refuse
    fields = {name.lower().rsplit(".", 1)[-1] for name in exc.fields}
    code = (exc.code or "").lower()
    about_the_prompt = bool(fields & _PROMPT_FIELDS)
    policy = any(word in code for word in ("content", "policy", "moderation"))
    return not (about_the_prompt or policy)

"""imagerouter: route image generation and editing across paid aggregators.

The cheapest healthy provider for each request, failover that never pays twice, budgets that
hold under concurrency, and a local ledger of every paid job. Providers are pluggy plugins.
"""

from __future__ import annotations

from .config import Config, load_config
from .emulated import Emulators
from .errors import (
    AuthenticationError,
    BudgetExceededError,
    ConfigError,
    ConnectionFailedError,
    DownloadFailedError,
    IdempotencyConflictError,
    IdempotentRequestFailedError,
    ImageRouterError,
    InputImageError,
    InsufficientCreditsError,
    InvalidRequestError,
    JobFailedError,
    JobTimedOutError,
    MalformedResponseError,
    MissingApiKeyError,
    NoEligibleOfferError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    RequestValidationError,
    SubmissionUnknownError,
)
from .events import AttemptEvent, ResultEvent
from .health_store import BackendState, BackendStats
from .hookspecs import hookimpl
from .offers import Offer
from .pricing import PriceTable
from .provider import (
    LoadedImage,
    Provider,
    ProviderClient,
    ProviderSettings,
    Submission,
    TaskSpec,
    TaskState,
    TaskStatus,
)
from .request import ImageInput, ImageRequest
from .result import AttemptRecord, GenerationResult, SavedImage
from .router import Router

__version__ = "0.1.0"

__all__ = [
    "AttemptEvent",
    "AttemptRecord",
    "AuthenticationError",
    "BackendState",
    "BackendStats",
    "BudgetExceededError",
    "Config",
    "ConfigError",
    "ConnectionFailedError",
    "DownloadFailedError",
    "Emulators",
    "GenerationResult",
    "IdempotencyConflictError",
    "IdempotentRequestFailedError",
    "ImageInput",
    "ImageRequest",
    "ImageRouterError",
    "InputImageError",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "JobFailedError",
    "JobTimedOutError",
    "LoadedImage",
    "MalformedResponseError",
    "MissingApiKeyError",
    "NoEligibleOfferError",
    "Offer",
    "PriceTable",
    "Provider",
    "ProviderClient",
    "ProviderError",
    "ProviderSettings",
    "ProviderUnavailableError",
    "RateLimitedError",
    "RequestValidationError",
    "ResultEvent",
    "Router",
    "SavedImage",
    "Submission",
    "SubmissionUnknownError",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "__version__",
    "hookimpl",
    "load_config",
]

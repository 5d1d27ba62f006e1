"""The Runflow wire client: create runs, poll them, find them by client_ref, upload inputs.

One HTTP attempt per call, on the `httpx.AsyncClient` the router owns (never closed here).
The key stays a `SecretStr` until the Authorization header is built for one request, and is
scrubbed from every error message and body excerpt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from imagerouter.errors import (
    Accepted,
    ConnectionFailedError,
    InputImageError,
    InvalidRequestError,
    MalformedResponseError,
    ProviderError,
    SubmissionUnknownError,
)
from imagerouter.provider import (
    FreeCheck,
    LoadedImage,
    ProviderClient,
    Submission,
    TaskSpec,
    TaskStatus,
)

from .mapping import PROVIDER, model_id_for
from .wire import (
    error_from_response,
    list_page,
    output_urls,
    parse_cost,
    request_id_of,
    run_id_of,
    run_state,
)

if TYPE_CHECKING:
    from imagerouter.offers import Offer

    from .provider import RunflowProvider

__all__ = ["FIND_PAGES", "FIND_PAGE_LIMIT", "RunflowClient", "encode_model_id", "status_of"]

FIND_PAGES = 5
FIND_PAGE_LIMIT = 100

# Errors after which the create request may have reached Runflow: the run may exist.
_UNKNOWN_AFTER_SEND = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
# Errors that prove nothing was sent.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def encode_model_id(model_id: str) -> str:
    """URL-encode each `/`-separated segment like the JS SDK's `encodeModelId`
    (`encodeURIComponent`), rejecting empty, `.` and `..` segments."""
    segments = model_id.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValueError(f"{model_id!r} is not a valid Runflow model id")
    return "/".join(quote(segment, safe="!'()*") for segment in segments)


class RunflowClient(ProviderClient):
    """Runflow's HTTP API for one account (key, base URL) on a shared `httpx.AsyncClient`."""

    def __init__(
        self,
        *,
        provider: RunflowProvider,
        http: httpx.AsyncClient,
        api_key: SecretStr,
        base_url: str,
        timeout: float,
        capabilities: Mapping[str, Any],
    ) -> None:
        self.provider = provider
        self._http = http
        self._key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.capabilities = capabilities
        self.user_agent = f"imagerouter-runflow/{provider.version}"

    def __repr__(self) -> str:
        return f"<RunflowClient {self.base_url}>"

    # -- helpers ---------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._key.get_secret_value()}",
            "User-Agent": self.user_agent,
            "Accept": "application/json",
        }

    def _scrub(self, text: str) -> str:
        key = self._key.get_secret_value()
        return text.replace(key, "[REDACTED]") if key else text

    async def _call(
        self,
        method: str,
        path: str,
        *,
        accepted_5xx: Accepted,
        accepted: Accepted | None = None,
        task_id: str | None = None,
        **kwargs: Any,
    ) -> tuple[httpx.Response, Any]:
        """One authenticated request that is not a create; returns (response, JSON body)."""
        try:
            response = await self._http.request(
                method,
                f"{self.base_url}{path}",
                headers=self._headers(),
                timeout=self.timeout,
                follow_redirects=False,
                **kwargs,
            )
        except httpx.TransportError as exc:
            raise ConnectionFailedError(
                f"{method} {path} failed: {self._scrub(_describe(exc))}",
                provider=PROVIDER,
                accepted=accepted or "no",
                task_id=task_id,
            ) from None
        if not response.is_success:
            raise error_from_response(
                response,
                accepted_5xx=accepted_5xx,
                accepted=accepted,
                task_id=task_id,
                scrub=self._scrub,
            )
        try:
            return response, response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MalformedResponseError(
                f"{method} {path} answered with a body that is not JSON",
                provider=PROVIDER,
                status_code=response.status_code,
                accepted=accepted or "no",
                body=self._scrub(response.text[:300]),
                task_id=task_id,
            ) from None

    # -- create --------------------------------------------------------------------------

    def run_body(self, offer: Offer, task: TaskSpec) -> dict[str, Any]:
        """The JSON body of POST /v1/models/{model_id}/runs for this task."""
        inputs: dict[str, Any] = {"prompt": task.prompt}
        inputs.update(offer.params)
        inputs.update(task.params)
        # One run's image count comes from the task (the offer's params hold the first run's).
        inputs["num_images"] = task.num_images
        if task.input_urls:
            inputs["image_urls"] = list(task.input_urls)
        if task.mask_url:
            inputs["mask_url"] = task.mask_url
        body: dict[str, Any] = {
            "input": inputs,
            "client_ref": task.task_id,
            "metadata": dict(task.metadata),
        }
        if task.callback_url:
            body["callback_url"] = task.callback_url
        return body

    async def submit(self, offer: Offer, task: TaskSpec) -> Submission:
        try:
            model_id = model_id_for(self.capabilities, task.model, task.operation)
            path = f"/v1/models/{encode_model_id(model_id)}/runs"
        except (KeyError, ValueError) as exc:
            raise InvalidRequestError(
                str(exc), provider=PROVIDER, accepted="no", task_id=task.task_id
            ) from None
        body = self.run_body(offer, task)
        unknown: dict[str, Any] = {
            "provider": PROVIDER,
            "task_id": task.task_id,
            "client_ref": task.task_id,
        }
        try:
            response = await self._http.post(
                f"{self.base_url}{path}",
                json=body,
                headers=self._headers(),
                timeout=self.timeout,
                follow_redirects=False,
            )
        except _NOT_SENT as exc:
            raise ConnectionFailedError(
                f"could not reach Runflow: {self._scrub(_describe(exc))}",
                provider=PROVIDER,
                accepted="no",
                task_id=task.task_id,
            ) from None
        except (*_UNKNOWN_AFTER_SEND, httpx.TransportError) as exc:
            raise SubmissionUnknownError(
                f"the create was sent but no answer came back ({self._scrub(_describe(exc))});"
                " the run may exist: look it up by client_ref",
                accepted="unknown",
                **unknown,
            ) from None
        if not response.is_success:
            raise error_from_response(
                response, accepted_5xx="unknown", task_id=task.task_id, scrub=self._scrub
            )
        try:
            run = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            run = None
        run_id = run_id_of(run) if isinstance(run, Mapping) else None
        if not isinstance(run, Mapping) or run_id is None:
            raise MalformedResponseError(
                "the create answered 2xx without a readable run id; the run may exist",
                status_code=response.status_code,
                accepted="unknown",
                body=self._scrub(response.text[:300]),
                **unknown,
            )
        return _submission(task, run, run_id, request_id_of(response, run))

    # -- poll ----------------------------------------------------------------------------

    async def get(self, poll_ref: str) -> TaskStatus:
        _, run = await self._call(
            "GET", f"/v1/runs/{quote(poll_ref, safe='')}", accepted_5xx="yes", accepted="yes"
        )
        if not isinstance(run, Mapping):
            raise MalformedResponseError(
                "GET /v1/runs/{id} answered with something that is not a run",
                provider=PROVIDER,
                accepted="yes",
            )
        return status_of(run)

    # -- reconcile -----------------------------------------------------------------------

    async def find(self, task: TaskSpec) -> Submission | None:
        """The run whose `client_ref` is our task id, or None after a few pages.

        Whether `GET /v1/runs` filters on `client_ref` (or `q`) server-side is unverified, so
        both are sent and every answer is filtered here on an exact `client_ref` match."""
        cursor: str | None = None
        for _ in range(FIND_PAGES):
            params: dict[str, str | int] = {
                "q": task.task_id,
                "client_ref": task.task_id,
                "limit": FIND_PAGE_LIMIT,
            }
            if cursor:
                params["pq"] = cursor
            response, body = await self._call(
                "GET",
                "/v1/runs",
                params=params,
                accepted_5xx="unknown",
                accepted="unknown",
                task_id=task.task_id,
            )
            runs, next_cursor = list_page(body)
            for run in runs:
                run_id = run_id_of(run)
                if run.get("client_ref") == task.task_id and run_id is not None:
                    return _submission(task, run, run_id, request_id_of(response, run))
            if not next_cursor or next_cursor == cursor:
                return None
            cursor = next_cursor
        return None

    # -- uploads -------------------------------------------------------------------------

    async def upload(self, image: LoadedImage) -> str:
        """Upload an edit input in Runflow's three steps; return its signed HTTPS URL."""
        limit = int(self.capabilities.get("max_upload_bytes", 50 * 1024 * 1024))
        if image.size_bytes > limit:
            raise InputImageError(
                image.name,
                f"{image.size_bytes:,} bytes is over Runflow's upload limit of {limit:,} bytes",
            )
        _, slot = await self._call(
            "POST",
            "/v1/asset-uploads",
            json={
                "filename": image.filename,
                "mime_type": image.mime_type,
                "size_bytes": image.size_bytes,
            },
            accepted_5xx="no",
        )
        asset_id = (slot.get("asset_id") or slot.get("id")) if isinstance(slot, Mapping) else None
        upload_url = slot.get("upload_url") if isinstance(slot, Mapping) else None
        if not asset_id or not isinstance(upload_url, str):
            raise MalformedResponseError(
                "POST /v1/asset-uploads answered without asset_id and upload_url",
                provider=PROVIDER,
            )
        await self._put_bytes(upload_url, image)
        _, asset = await self._call(
            "POST",
            f"/v1/asset-uploads/{quote(str(asset_id), safe='')}/confirmations",
            json={"folder_id": None},
            accepted_5xx="no",
        )
        url = asset.get("url") if isinstance(asset, Mapping) else None
        if not isinstance(url, str) or not url:
            raise MalformedResponseError(
                "the upload confirmation answered without a url", provider=PROVIDER
            )
        return url

    async def _put_bytes(self, upload_url: str, image: LoadedImage) -> None:
        # A presigned storage URL: it must not see our Authorization header.
        try:
            response = await self._http.put(
                upload_url,
                content=image.data,
                headers={"Content-Type": image.mime_type, "User-Agent": self.user_agent},
                timeout=self.timeout,
                follow_redirects=False,
            )
        except httpx.TransportError as exc:
            raise ConnectionFailedError(
                f"uploading {image.name} failed: {_describe(exc)}", provider=PROVIDER
            ) from None
        if not response.is_success:
            raise error_from_response(response, accepted_5xx="no", scrub=self._scrub)

    # -- free check ----------------------------------------------------------------------

    async def free_check(self) -> FreeCheck | None:
        try:
            _, body = await self._call("GET", "/v1/health", accepted_5xx="no")
        except ProviderError as exc:
            return FreeCheck(ok=False, detail=str(exc))
        status = body.get("status") if isinstance(body, Mapping) else None
        return FreeCheck(ok=status == "ok", detail=f"health: {status}")


def status_of(run: Mapping[str, Any]) -> TaskStatus:
    """A run object as a normalized TaskStatus."""
    state = run_state(run)
    error = run.get("error") if isinstance(run.get("error"), Mapping) else {}
    assert isinstance(error, Mapping)
    message = run.get("failure_message") or error.get("message")
    code = run.get("failure_code") or error.get("code")
    return TaskStatus(
        state=state,
        image_urls=output_urls(run.get("output")) if state.produced_images else (),
        billed_usd=parse_cost(run.get("cost")) if state.terminal else None,
        error=str(message) if message else None,
        error_code=str(code) if code else None,
        raw=run,
    )


def _submission(
    task: TaskSpec, run: Mapping[str, Any], run_id: str, request_id: str | None
) -> Submission:
    state = run_state(run)
    return Submission(
        provider=PROVIDER,
        task_id=run_id,
        poll_ref=run_id,
        state=state,
        request_id=request_id,
        billed_usd=parse_cost(run.get("cost")) if state.terminal else None,
        raw=run,
    )


def _describe(exc: httpx.TransportError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

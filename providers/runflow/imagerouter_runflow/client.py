"""The Runflow wire client: create runs, poll them, find them by client_ref, upload inputs.

Built on the provider kit's `HttpClient`: one HTTP attempt per call on the
`httpx.AsyncClient` the router owns, transport failures mapped to "never sent" / "sent,
outcome unknown", the key kept in a SecretStr until a header is built and redacted from every
error message and body excerpt. This module adds only Runflow's endpoints and shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from imagerouter.errors import InputImageError, InvalidRequestError, ProviderError
from imagerouter.provider import FreeCheck, LoadedImage, Submission, TaskSpec, TaskStatus
from imagerouter.provider_kit import ErrorBody, HttpClient, json_or_none, parse_usd

from .mapping import PROVIDER, model_id_for
from .wire import field_errors, list_page, output_urls, run_id_of, run_state

if TYPE_CHECKING:
    from imagerouter.offers import Offer

    from .provider import RunflowProvider

__all__ = ["FIND_PAGES", "FIND_PAGE_LIMIT", "RunflowClient", "encode_model_id", "status_of"]

FIND_PAGES = 5
FIND_PAGE_LIMIT = 100
# A 503 with this code: the model is not being served; no run was created.
_MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"


def encode_model_id(model_id: str) -> str:
    """URL-encode each `/`-separated segment like the JS SDK's `encodeModelId`
    (`encodeURIComponent`), rejecting empty, `.` and `..` segments."""
    segments = model_id.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValueError(f"{model_id!r} is not a valid Runflow model id")
    return "/".join(quote(segment, safe="!'()*") for segment in segments)


class RunflowClient(HttpClient):
    """Runflow's HTTP API for one account (key, base URL) on a shared `httpx.AsyncClient`."""

    request_id_header = "runflow-request-id"

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
        super().__init__(provider, http=http, api_key=api_key, base_url=base_url, timeout=timeout)
        self.capabilities = capabilities

    # -- the kit's hooks -------------------------------------------------------------------

    def parse_error(self, response: httpx.Response) -> ErrorBody:
        """Runflow's `{code, message, errors}` or FastAPI's `{detail}`."""
        raw = json_or_none(response)
        body = raw if isinstance(raw, Mapping) else {}
        code = body.get("code")
        message = body.get("message")
        if message is None and isinstance(body.get("detail"), str):
            message = body["detail"]
        text = str(message) if message else (response.reason_phrase or None)
        fields = field_errors(body) if response.status_code in (400, 422) else {}
        return ErrorBody(text, str(code) if code is not None else None, fields)

    def request_id_of(self, response: httpx.Response) -> str | None:
        """The body's `request_id`, else the `Runflow-Request-Id` header."""
        raw = json_or_none(response) if response.content else None
        value = raw.get("request_id") if isinstance(raw, Mapping) else None
        return str(value) if value else super().request_id_of(response)

    def nothing_created(self, response: httpx.Response, body: ErrorBody) -> bool:
        return response.status_code == 503 and body.code == _MODEL_UNAVAILABLE

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
        response = await self.send(
            "POST", path, call="create", json=body, task_id=task.task_id,
            client_ref=task.task_id,
        )
        run = json_or_none(response)
        run_id = run_id_of(run) if isinstance(run, Mapping) else None
        if not isinstance(run, Mapping) or run_id is None:
            raise self.malformed(
                response, "the create answered 2xx without a readable run id; the run may exist",
                call="create", task_id=task.task_id, client_ref=task.task_id,
            )
        return _submission(task, run, run_id, self.request_id_of(response))

    # -- poll ----------------------------------------------------------------------------

    async def get(self, poll_ref: str) -> TaskStatus:
        response = await self.send(
            "GET", f"/v1/runs/{quote(poll_ref, safe='')}", call="get", task_id=poll_ref
        )
        return status_of(self.json_object(response, call="get", task_id=poll_ref))

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
            response = await self.send(
                "GET", "/v1/runs", call="find", params=params, task_id=task.task_id
            )
            body = json_or_none(response)
            if body is None:
                raise self.malformed(
                    response, "GET /v1/runs answered with a body that is not JSON",
                    call="find", task_id=task.task_id,
                )
            runs, next_cursor = list_page(body)
            for run in runs:
                run_id = run_id_of(run)
                if run.get("client_ref") == task.task_id and run_id is not None:
                    return _submission(task, run, run_id, self.request_id_of(response))
            if not next_cursor or next_cursor == cursor:
                return None
            cursor = next_cursor
        return None

    # -- uploads -------------------------------------------------------------------------

    async def upload(self, image: LoadedImage) -> str:
        """Upload an edit input in Runflow's three steps; return its signed HTTPS URL."""
        limit = self.provider.upload_limit_bytes(self.capabilities)
        if limit is not None and image.size_bytes > limit:
            raise InputImageError(
                image.name,
                f"{image.size_bytes:,} bytes is over Runflow's upload limit of {limit:,} bytes",
            )
        response = await self.send(
            "POST",
            "/v1/asset-uploads",
            call="upload",
            json={
                "filename": image.filename,
                "mime_type": image.mime_type,
                "size_bytes": image.size_bytes,
            },
        )
        slot = self.json_object(response, call="upload")
        asset_id = slot.get("asset_id") or slot.get("id")
        upload_url = slot.get("upload_url")
        if not asset_id or not isinstance(upload_url, str):
            raise self.malformed(
                response, "POST /v1/asset-uploads answered without asset_id and upload_url",
                call="upload",
            )
        # A presigned storage URL: it must not see our Authorization header.
        await self.send(
            "PUT", upload_url, call="upload", authenticated=False, content=image.data,
            headers={"Content-Type": image.mime_type},
        )
        response = await self.send(
            "POST",
            f"/v1/asset-uploads/{quote(str(asset_id), safe='')}/confirmations",
            call="upload",
            json={"folder_id": None},
        )
        url = self.json_object(response, call="upload").get("url")
        if not isinstance(url, str) or not url:
            raise self.malformed(
                response, "the upload confirmation answered without a url", call="upload"
            )
        return url

    # -- free check ----------------------------------------------------------------------

    async def free_check(self) -> FreeCheck | None:
        try:
            body = json_or_none(await self.send("GET", "/v1/health", call="check"))
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
        billed_usd=parse_usd(run.get("cost")) if state.terminal else None,
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
        billed_usd=parse_usd(run.get("cost")) if state.terminal else None,
        raw=run,
    )


"""The RunAPI wire client: one HTTP attempt per call, on the router's `httpx.AsyncClient`.

Creates are `POST /api/v1/{service}/{action}` with an `Idempotency-Key`, so the router may
retry an unknown create without making a second paid task; polls are
`GET /api/v1/{service}/{action}/{id}`. Every failure is raised as an `imagerouter.errors`
class by the provider kit's `HttpClient`, which also keeps the API key in a SecretStr until
the header is built and redacts it from anything an error carries.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from imagerouter.errors import ProviderError
from imagerouter.provider import FreeCheck, LoadedImage, Submission, TaskSpec, TaskState, TaskStatus
from imagerouter.provider_kit import ErrorBody, HttpClient

from .wire import (
    ACTIONS,
    NO_CHANNEL,
    SERVICES,
    normalize_status,
    parse_error_body,
    parse_reported_cost,
)

if TYPE_CHECKING:
    from imagerouter.offers import Offer

    from .provider import RunAPIProvider

__all__ = ["RunAPIClient"]

# The task id RunAPI puts on answers about one task, when the body does not say.
_TASK_HEADER = "x-runapi-task-id"


class RunAPIClient(HttpClient):
    """Talks to one RunAPI base URL with one key. The router owns `http` (never closed here)."""

    task_id_header = _TASK_HEADER
    error_hints = {409: "refused a reused Idempotency-Key with different input"}

    def __init__(
        self,
        provider: RunAPIProvider,
        *,
        api_key: SecretStr,
        base_url: str,
        http: httpx.AsyncClient,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(provider, http=http, api_key=api_key, base_url=base_url, timeout=timeout)

    # -- ProviderClient ---------------------------------------------------------------------

    async def submit(self, offer: Offer, task: TaskSpec) -> Submission:
        return await self._create(offer.params, task)

    async def reconcile(self, task: TaskSpec) -> Submission | None:
        """Replay the create with the same Idempotency-Key and the same body: RunAPI answers
        with the original task (`task_replayed: true`) when it exists. When the first send
        never arrived, this send is the task's first (still one task for one ordered image);
        the core only calls it within `reconcile_window_s` of the first send."""
        return await self._create(task.params, task)

    async def _create(self, params: Mapping[str, Any], task: TaskSpec) -> Submission:
        service, action = SERVICES[task.model], ACTIONS[task.operation]
        body: dict[str, Any] = {**params, "prompt": task.prompt}
        if task.operation == "edit":
            body["source_image_urls"] = list(task.input_urls)
        if task.callback_url:
            body["callback_url"] = task.callback_url
        headers = {
            "Idempotency-Key": task.idempotency_key,
            "X-Client-Request-Id": task.task_id,
        }
        response = await self.send(
            "POST",
            f"/api/v1/{service}/{action}",
            call="create",
            json=_compact(body),
            headers=headers,
            client_ref=task.task_id,
        )
        data = self.json_object(response, call="create", client_ref=task.task_id)
        task_id = _text(data.get("id")) or _text(response.headers.get("x-runapi-task-id"))
        if task_id is None:
            raise self.malformed(
                response, "the create answer has no task id", call="create",
                client_ref=task.task_id,
            )
        status = data.get("status")
        return Submission(
            provider=self.provider.name,
            task_id=task_id,
            poll_ref=f"{service}/{action}/{task_id}",
            state=normalize_status(status) if status is not None else TaskState.QUEUED,
            replayed=data.get("task_replayed") is True,
            request_id=response.headers.get("x-request-id"),
            billed_usd=parse_reported_cost(data),
            raw=data,
        )

    async def get(self, poll_ref: str) -> TaskStatus:
        task_id = poll_ref.rsplit("/", 1)[-1]
        response = await self.send(
            "GET", f"/api/v1/{poll_ref.strip('/')}", call="get", task_id=task_id
        )
        data = self.json_object(response, call="get", task_id=task_id)
        state = normalize_status(data.get("status"))
        urls = _image_urls(data.get("images"))
        error, error_code = _error_of(data.get("error"))
        if state is TaskState.SUCCEEDED and not urls:
            raise self.malformed(
                response, "the task completed without images", call="get", task_id=task_id
            )
        if state is TaskState.FAILED and error is None:
            error = "RunAPI reported the task failed without saying why"
        return TaskStatus(
            state=state,
            image_urls=urls,
            billed_usd=parse_reported_cost(data),
            error=self.redact(error) if error else None,
            error_code=error_code,
            raw=data,
        )

    async def upload(self, image: LoadedImage) -> str:
        body = {
            "source": {"type": "base64", "data": base64.b64encode(image.data).decode("ascii")},
            "file_name": image.filename,
        }
        response = await self.send("POST", "/api/v1/files", call="upload", json=body)
        data = self.json_object(response, call="upload")
        url = _text(data.get("url"))
        if url is None:
            raise self.malformed(response, "the upload answer has no url", call="upload")
        return url

    async def free_check(self) -> FreeCheck:
        """`GET /api/v1/me/balance`: free, and proves the key works."""
        try:
            response = await self.send("GET", "/api/v1/me/balance", call="check")
            data = self.json_object(response, call="check")
        except ProviderError as exc:
            return FreeCheck(ok=False, detail=exc.message)
        cents = data.get("balance_cents")
        if isinstance(cents, bool) or not isinstance(cents, int | float | str):
            return FreeCheck(ok=True, detail="key accepted; no balance in the answer")
        balance = Decimal(str(cents)) / 100
        return FreeCheck(ok=True, detail=f"balance ${balance:.2f}", balance_usd=balance)

    # -- the kit's hooks ---------------------------------------------------------------------

    def parse_error(self, response: httpx.Response) -> ErrorBody:
        body = parse_error_body(response.text)
        if response.status_code == 409 and not body.code:
            # A bare 409 on a create is RunAPI refusing a reused Idempotency-Key.
            body = ErrorBody(body.message, "idempotency_conflict", body.fields)
        return body

    def nothing_created(self, response: httpx.Response, body: ErrorBody) -> bool:
        # RunAPI's 503 "no channel" says no upstream took the job: nothing was created.
        return response.status_code == 503 and (body.message or "").strip() == NO_CHANNEL


def _compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None, blank strings and empty lists, as RunAPI's own SDKs do."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, list | tuple | dict) and not value:
            continue
        out[key] = value
    return out


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _image_urls(images: Any) -> tuple[str, ...]:
    """`images[].url`; a list of plain URL strings is accepted too."""
    if not isinstance(images, list):
        return ()
    urls: list[str] = []
    for item in images:
        url = _text(item.get("url")) if isinstance(item, Mapping) else _text(item)
        if url is not None:
            urls.append(url)
    return tuple(urls)


def _error_of(error: Any) -> tuple[str | None, str | None]:
    """A task's `error`: a string, or an object with message and code."""
    if isinstance(error, Mapping):
        return _text(error.get("message")) or _text(error.get("error")), _text(error.get("code"))
    return _text(error), None

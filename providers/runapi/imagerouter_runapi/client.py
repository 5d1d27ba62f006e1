"""The RunAPI wire client: one HTTP attempt per call, on the router's `httpx.AsyncClient`.

Creates are `POST /api/v1/{service}/{action}` with an `Idempotency-Key`, so the router may
retry an unknown create without making a second paid task; polls are
`GET /api/v1/{service}/{action}/{id}`. Every failure is raised as an `imagerouter.errors`
class (see failures.py); the API key lives in a SecretStr until the header is built and is
scrubbed from anything an error carries.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from imagerouter.errors import ProviderError
from imagerouter.provider import (
    FreeCheck,
    LoadedImage,
    ProviderClient,
    Submission,
    TaskSpec,
    TaskState,
    TaskStatus,
)

from .failures import Call, error_from_response, error_from_transport, malformed
from .wire import ACTIONS, SERVICES, normalize_status, parse_reported_cost

if TYPE_CHECKING:
    from imagerouter.offers import Offer

    from .provider import RunAPIProvider

__all__ = ["RunAPIClient"]

_REDACTED = "[redacted]"


class RunAPIClient(ProviderClient):
    """Talks to one RunAPI base URL with one key. The router owns `http` (never closed here)."""

    def __init__(
        self,
        provider: RunAPIProvider,
        *,
        api_key: SecretStr,
        base_url: str,
        http: httpx.AsyncClient,
        timeout: float = 60.0,
    ) -> None:
        self.provider = provider
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._timeout = httpx.Timeout(timeout)
        self._user_agent = f"imagerouter-runapi/{provider.version}"

    def __repr__(self) -> str:
        return f"<RunAPIClient {self.base_url}>"

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
        response = await self._send(
            "POST",
            f"/api/v1/{service}/{action}",
            call="create",
            json=_compact(body),
            headers=headers,
            client_ref=task.task_id,
        )
        data = self._json_object(response, call="create", client_ref=task.task_id)
        task_id = _text(data.get("id")) or _text(response.headers.get("x-runapi-task-id"))
        if task_id is None:
            raise malformed(
                response, "the create answer has no task id", call="create",
                redact=self._redact, client_ref=task.task_id,
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
        response = await self._send(
            "GET", f"/api/v1/{poll_ref.strip('/')}", call="get", task_id=task_id
        )
        data = self._json_object(response, call="get", task_id=task_id)
        state = normalize_status(data.get("status"))
        urls = _image_urls(data.get("images"))
        error, error_code = _error_of(data.get("error"))
        if state is TaskState.SUCCEEDED and not urls:
            raise malformed(
                response, "the task completed without images", call="get",
                redact=self._redact, task_id=task_id,
            )
        if state is TaskState.FAILED and error is None:
            error = "RunAPI reported the task failed without saying why"
        return TaskStatus(
            state=state,
            image_urls=urls,
            billed_usd=parse_reported_cost(data),
            error=self._redact(error) if error else None,
            error_code=error_code,
            raw=data,
        )

    async def upload(self, image: LoadedImage) -> str:
        body = {
            "source": {"type": "base64", "data": base64.b64encode(image.data).decode("ascii")},
            "file_name": image.filename,
        }
        response = await self._send("POST", "/api/v1/files", call="upload", json=body)
        data = self._json_object(response, call="upload")
        url = _text(data.get("url"))
        if url is None:
            raise malformed(response, "the upload answer has no url", call="upload",
                            redact=self._redact)
        return url

    async def free_check(self) -> FreeCheck:
        """`GET /api/v1/me/balance`: free, and proves the key works."""
        try:
            response = await self._send("GET", "/api/v1/me/balance", call="check")
            data = self._json_object(response, call="check")
        except ProviderError as exc:
            return FreeCheck(ok=False, detail=exc.message)
        cents = data.get("balance_cents")
        if isinstance(cents, bool) or not isinstance(cents, int | float | str):
            return FreeCheck(ok=True, detail="key accepted; no balance in the answer")
        balance = Decimal(str(cents)) / 100
        return FreeCheck(ok=True, detail=f"balance ${balance:.2f}", balance_usd=balance)

    # -- plumbing ---------------------------------------------------------------------------

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Accept": "application/json",
            "User-Agent": self._user_agent,
        }
        headers.update(extra or {})
        return headers

    async def _send(
        self,
        method: str,
        path: str,
        *,
        call: Call,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        task_id: str | None = None,
        client_ref: str | None = None,
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method,
                self.base_url + path,
                json=json,
                headers=self._headers(headers),
                timeout=self._timeout,
            )
        except httpx.TransportError as exc:
            # `from None`: the httpx exception holds the request (and so the key header).
            raise error_from_transport(
                exc, call=call, redact=self._redact, task_id=task_id, client_ref=client_ref
            ) from None
        if not response.is_success:
            raise error_from_response(
                response, call=call, redact=self._redact, task_id=task_id, client_ref=client_ref
            )
        return response

    def _json_object(
        self,
        response: httpx.Response,
        *,
        call: Call,
        task_id: str | None = None,
        client_ref: str | None = None,
    ) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise malformed(
                response, "the body is not a JSON object", call=call, redact=self._redact,
                task_id=task_id, client_ref=client_ref,
            )
        return data

    def _redact(self, text: str) -> str:
        secret = self._api_key.get_secret_value()
        return text.replace(secret, _REDACTED) if secret else text

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

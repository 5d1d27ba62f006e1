"""`HttpClient`: the base of a provider's wire client.

It makes exactly one HTTP attempt per call (the router owns retries, failover and polling),
on the `httpx.AsyncClient` the router owns (never closed here), maps transport failures to
"never sent" / "sent, outcome unknown", non-2xx answers to the core's errors, and redacts the
key from everything an error keeps. A plugin subclasses it and writes only its endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from imagerouter.errors import ProviderError
from imagerouter.provider import ProviderClient

from .errors import Call, ErrorBody, error_from_status, error_from_transport, malformed
from .parsing import json_or_none
from .redaction import make_redactor

if TYPE_CHECKING:
    from imagerouter.provider import Provider

__all__ = ["ERROR_BODY_LIMIT", "HttpClient"]

# How much of a streamed error answer is read (an error body is small; a broken proxy's
# may not be).
ERROR_BODY_LIMIT = 64 * 1024


class HttpClient(ProviderClient):
    """One provider account (key, base URL) on a shared `httpx.AsyncClient`."""

    # Response header that carries the provider's request id, if it sends one.
    request_id_header: str = "x-request-id"
    # A header naming the provider's task id on error answers (None: the provider sends none).
    task_id_header: str | None = None
    # Per-status phrases replacing the generic ones in error messages ({409: "refused ..."}).
    error_hints: Mapping[int, str] = {}

    def __init__(
        self,
        provider: Provider,
        *,
        http: httpx.AsyncClient,
        api_key: SecretStr,
        base_url: str,
        timeout: float | httpx.Timeout = 60.0,
    ) -> None:
        self.provider = provider
        self._http = http
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout: float | httpx.Timeout = timeout
        self.user_agent = f"imagerouter-{provider.name}/{provider.version}"
        self.redact = make_redactor(api_key)

    def __repr__(self) -> str:
        # Never the key: only what tells two clients apart.
        return f"<{type(self).__name__} {self.base_url}>"

    # -- hooks a plugin overrides ---------------------------------------------------------

    def request_headers(self) -> dict[str, str]:
        """Headers every request carries; the key is read out of its SecretStr only here."""
        return {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "User-Agent": self.user_agent,
            "Accept": "application/json",
        }

    def parse_error(self, response: httpx.Response) -> ErrorBody:
        """What a non-2xx body says; the default reads `{"error": {"message","code"}}`,
        `{"error": "..."}` and a top-level `message` / `code` / `detail`."""
        data = json_or_none(response)
        if not isinstance(data, Mapping):
            return ErrorBody()
        error = data.get("error")
        message = code = None
        if isinstance(error, Mapping):
            message, code = _text(error.get("message")), _text(error.get("code"))
        else:
            message = _text(error)
        message = message or _text(data.get("message")) or _text(data.get("detail"))
        return ErrorBody(message=message, code=code or _text(data.get("code")))

    def request_id_of(self, response: httpx.Response) -> str | None:
        """The provider's id for this answer (from `request_id_header`)."""
        value = response.headers.get(self.request_id_header)
        return str(value) if value else None

    def task_id_of(self, response: httpx.Response, given: str | None) -> str | None:
        """The task an answer is about: the one the call named, else `task_id_header`'s."""
        if given or self.task_id_header is None:
            return given
        return response.headers.get(self.task_id_header) or None

    def nothing_created(self, response: httpx.Response, body: ErrorBody) -> bool:
        """True when a 5xx answer says no job was created (a provider's "no capacity")."""
        return False

    def error_for(
        self,
        response: httpx.Response,
        *,
        call: Call,
        task_id: str | None = None,
        client_ref: str | None = None,
    ) -> ProviderError:
        """The error a non-2xx `response` to `call` raises."""
        body = self.parse_error(response)
        error = error_from_status(
            response,
            provider=self.provider.name,
            title=self.provider.title,
            call=call,
            body=body,
            redact=self.redact,
            request_id=self.request_id_of(response),
            task_id=self.task_id_of(response, task_id),
            client_ref=client_ref,
            nothing_created=self.nothing_created(response, body),
            hints=self.error_hints or None,
        )
        return self.refine_error(error, response, body)

    def refine_error(
        self, error: ProviderError, response: httpx.Response, body: ErrorBody
    ) -> ProviderError:
        """The error `error_for` raises, given the generic one: a plugin returns another for
        a provider's own meaning of an answer (a 429 that is really "out of quota")."""
        return error

    # -- the one attempt ------------------------------------------------------------------

    def url_of(self, path: str) -> str:
        """`base_url + path`, or `path` itself when it is an absolute URL."""
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"

    def transport_error(
        self,
        exc: httpx.RequestError,
        *,
        call: Call,
        task_id: str | None,
        client_ref: str | None,
        answered: bool = False,
    ) -> ProviderError:
        """The core error for a request that got no (complete) answer."""
        return error_from_transport(
            exc,
            provider=self.provider.name,
            title=self.provider.title,
            call=call,
            redact=self.redact,
            task_id=task_id,
            client_ref=client_ref,
            answered=answered,
        )

    async def send(
        self,
        method: str,
        path: str,
        *,
        call: Call,
        task_id: str | None = None,
        client_ref: str | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request to `base_url + path` (or to an absolute URL). Raises the core error
        for a transport failure or a non-2xx answer; returns any 2xx response.
        `authenticated=False` sends no `request_headers()` (a presigned storage URL must
        never see the key)."""
        url = self.url_of(path)
        base = self.request_headers() if authenticated else {"User-Agent": self.user_agent}
        try:
            response = await self._http.request(
                method,
                url,
                headers={**base, **(headers or {})},
                timeout=self.timeout,
                follow_redirects=False,
                **kwargs,
            )
        except httpx.TransportError as exc:
            raise self.transport_error(
                exc, call=call, task_id=task_id, client_ref=client_ref
            ) from None
        if not response.is_success:
            raise self.error_for(response, call=call, task_id=task_id, client_ref=client_ref)
        return response

    @asynccontextmanager
    async def open_stream(
        self,
        method: str,
        path: str,
        *,
        call: Call,
        task_id: str | None = None,
        client_ref: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[httpx.Response]:
        """`send`, for an answer read as it arrives (a large or event-stream body): the block
        gets a 2xx response whose body it iterates. A non-2xx answer raises `error_for` (on
        its first `ERROR_BODY_LIMIT` bytes); a transport failure, before or while the block
        reads, raises the core error (`answered` once a 2xx status line had come)."""
        url = self.url_of(path)
        answered = False
        try:
            async with self._http.stream(
                method,
                url,
                headers={**self.request_headers(), **(headers or {})},
                timeout=self.timeout,
                follow_redirects=False,
                **kwargs,
            ) as response:
                if not response.is_success:
                    raise self.error_for(
                        await _read_capped(response),
                        call=call,
                        task_id=task_id,
                        client_ref=client_ref,
                    )
                answered = True
                yield response
        except httpx.RequestError as exc:
            raise self.transport_error(
                exc, call=call, task_id=task_id, client_ref=client_ref, answered=answered
            ) from None

    def json_object(
        self,
        response: httpx.Response,
        *,
        call: Call,
        task_id: str | None = None,
        client_ref: str | None = None,
    ) -> dict[str, Any]:
        """The JSON object of a 2xx answer, or a MalformedResponseError raised."""
        data = json_or_none(response)
        if not isinstance(data, Mapping):
            raise self.malformed(
                response,
                "the body is not a JSON object",
                call=call,
                task_id=task_id,
                client_ref=client_ref,
            )
        return dict(data)

    def malformed(
        self,
        response: httpx.Response,
        why: str,
        *,
        call: Call,
        task_id: str | None = None,
        client_ref: str | None = None,
    ) -> ProviderError:
        """The error for a 2xx answer that cannot be read."""
        return malformed(
            response,
            why,
            provider=self.provider.name,
            title=self.provider.title,
            call=call,
            redact=self.redact,
            request_id=self.request_id_of(response),
            task_id=self.task_id_of(response, task_id),
            client_ref=client_ref,
        )


async def _read_capped(response: httpx.Response) -> httpx.Response:
    """A copy of a streamed `response` holding at most ERROR_BODY_LIMIT bytes of its body,
    so the error mapping can read it like any other answer."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > ERROR_BODY_LIMIT:
            break
    # The bytes are decoded already: the copy must not claim an encoding or a length.
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=bytes(body[:ERROR_BODY_LIMIT]),
        request=response.request,
    )


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None

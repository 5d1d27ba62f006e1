"""`OpenAIClient`: one attempt per call against OpenAI's Images API.

The POST is the job: `submit` sends it, reads the answer as it streams in (decoding each
base64 image straight to a temp file, b64stream.py), and returns a `Submission` that already
carries its terminal `TaskStatus` with those files, so the router records the acceptance and
then skips polling. With `partial_images` the call is made with `stream: true` and each
partial image is handed to `TaskSpec.on_partial` as it arrives. The billed cost is computed
from the answer's `usage` at the price table's token rates.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from imagerouter.errors import (
    DownloadFailedError,
    InsufficientCreditsError,
    InvalidRequestError,
    ProviderError,
)
from imagerouter.provider_kit import (
    ErrorBody,
    HttpClient,
    LoadedImage,
    PriceTable,
    Submission,
    TaskSpec,
    TaskState,
    TaskStatus,
    json_or_none,
)

from .b64stream import FILE_MARK, B64Splitter, SplitError
from .tokens import TokenRates, cost_of_usage

if TYPE_CHECKING:
    from imagerouter.offers import Offer

    from .provider import OpenAIProvider

__all__ = ["UPLOAD_SCHEME", "OpenAIClient"]

UPLOAD_SCHEME = "openai-upload:"  # what `upload` returns: a handle to bytes kept here
_UPLOADS_KEPT = 64
_MAX_IMAGE_BYTES = 64 * 2**20
_EXCERPT = 300
# Refusals about the content itself: another backend would refuse the same prompt.
_POLICY_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
# The fields of offer.params sent as they are (the rest are the client's business).
_JSON_FIELDS = (
    "model",
    "quality",
    "size",
    "output_format",
    "background",
    "moderation",
    "output_compression",
    "input_fidelity",
    "partial_images",
)


class OpenAIClient(HttpClient):
    """Talks to one OpenAI base URL (…/v1) with one key. The router owns `http`.

    The kit's `HttpClient` makes the one attempt and maps failures; the Images API is
    synchronous, so a create decides everything by how far it got: nothing sent is `no`;
    4xx and 503 made nothing (`no`, via `nothing_created`); another 5xx, no answer, or an
    answer cut off may have made and billed the image (`unknown`: OpenAI has no idempotency
    key and no job lookup for images, so it is never resent nor failed over by default).
    """

    def __init__(
        self,
        provider: OpenAIProvider,
        *,
        api_key: SecretStr,
        base_url: str,
        http: httpx.AsyncClient,
        timeout: float,
        prices: PriceTable,
        organization: str | None = None,
        project: str | None = None,
    ) -> None:
        # A high-quality image takes a minute or more: the read may wait `timeout`, the
        # connect only a little (a refused connect is "never sent", safe to fail over).
        super().__init__(
            provider,
            http=http,
            api_key=api_key,
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )
        self._prices = prices
        self._organization = organization
        self._project = project
        self._uploads: OrderedDict[str, LoadedImage] = OrderedDict()

    # -- kit hooks --------------------------------------------------------------------------

    def request_headers(self) -> dict[str, str]:
        headers = super().request_headers()
        headers["Accept"] = "application/json, text/event-stream"
        if self._organization:
            headers["OpenAI-Organization"] = self._organization
        if self._project:
            headers["OpenAI-Project"] = self._project
        return headers

    def parse_error(self, response: httpx.Response) -> ErrorBody:
        """`{"error": {message, type, param, code}}`: the code falls back to the type, and
        a content refusal names the prompt (so the router never fails it over)."""
        error = _error_fields(response)
        if not error:
            return ErrorBody()
        said = str(error.get("message") or f"HTTP {response.status_code}")
        code = error.get("code") or error.get("type")
        param = error.get("param")
        if _is_refusal(error):
            return ErrorBody(
                message=said, code=str(code or "moderation_blocked"), fields={"prompt": [said]}
            )
        return ErrorBody(
            message=said,
            code=str(code) if code else None,
            fields={str(param): [said]} if param else {},
        )

    def nothing_created(self, response: httpx.Response, body: ErrorBody) -> bool:
        # 503 is OpenAI's "overloaded, slow down": nothing ran. A 500/502/504 may be a proxy
        # answering after OpenAI started the job.
        return response.status_code == 503

    def refine_error(
        self, error: ProviderError, response: httpx.Response, body: ErrorBody
    ) -> ProviderError:
        common: dict[str, Any] = {
            "provider": error.provider,
            "status_code": error.status_code,
            "request_id": error.request_id,
            "code": error.code,
            "body": error.body,
            "client_ref": error.client_ref,
        }
        said = self.redact(body.message or f"HTTP {response.status_code}")
        if response.status_code == 429 and body.code == "insufficient_quota":
            # OpenAI's "out of quota" is a 429 that waiting does not fix.
            return InsufficientCreditsError(f"OpenAI account is out of quota: {said}", **common)
        if isinstance(error, InvalidRequestError) and _is_refusal(_error_fields(response)):
            return InvalidRequestError(
                f"OpenAI's safety system refused the request: {said}",
                fields=body.fields,
                **common,
            )
        return error

    # -- ProviderClient ---------------------------------------------------------------------

    async def upload(self, image: LoadedImage) -> str:
        """OpenAI takes edit inputs in the edit call itself (multipart): keep the bytes and
        hand back a handle; `submit` sends them. Nothing is sent, nothing is billed."""
        handle = f"{UPLOAD_SCHEME}{uuid.uuid4().hex}"
        self._uploads[handle] = image
        while len(self._uploads) > _UPLOADS_KEPT:
            self._uploads.popitem(last=False)
        return handle

    async def submit(self, offer: Offer, task: TaskSpec) -> Submission:
        body = {name: offer.params[name] for name in _JSON_FIELDS if name in offer.params}
        body.update(prompt=task.prompt, n=task.num_images)
        stream = bool(offer.params.get("stream"))
        if stream:
            body["stream"] = True
        if task.operation == "edit":
            path, kwargs = "/images/edits", self._edit_payload(body, task)
        else:
            path, kwargs = "/images/generations", {"json": body}
        return await self._post(path, kwargs, task, offer.model, stream=stream)

    async def get(self, poll_ref: str) -> TaskStatus:
        # Only `resume` gets here (the router never polls a synchronous job): an image that
        # did not reach disk from the create's answer exists nowhere else.
        raise DownloadFailedError(
            "OpenAI's Images API is synchronous: its images come only in the answer to the "
            f"create ({poll_ref}), so one that did not reach disk cannot be fetched again",
            provider=self.provider.name,
            code="not_refetchable",
            task_id=poll_ref,
        )

    async def reconcile(self, task: TaskSpec) -> Submission | None:
        # No idempotency key and no job lookup exist for images: a lost answer stays unknown.
        raise NotImplementedError("OpenAI offers no way to look a lost image call up")

    # -- wire -------------------------------------------------------------------------------

    def _edit_payload(self, body: Mapping[str, Any], task: TaskSpec) -> dict[str, Any]:
        """Multipart (`image[]` parts and a `mask`) for uploaded inputs; JSON `images` with
        `image_url` when every input is a URL the user let through."""
        refs = [*task.input_urls, *([task.mask_url] if task.mask_url else [])]
        if all(not ref.startswith(UPLOAD_SCHEME) for ref in refs):
            data = dict(body)
            data["images"] = [{"image_url": url} for url in task.input_urls]
            if task.mask_url:
                data["mask"] = {"image_url": task.mask_url}
            return {"json": data}
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        name = "image[]" if len(task.input_urls) > 1 else "image"
        for ref in task.input_urls:
            files.append((name, self._file(ref)))
        if task.mask_url:
            files.append(("mask", self._file(task.mask_url)))
        form = {key: _form_value(value) for key, value in body.items()}
        return {"data": form, "files": files}

    def _file(self, ref: str) -> tuple[str, bytes, str]:
        image = self._uploads.get(ref)
        if image is None:
            if ref.startswith(UPLOAD_SCHEME):
                raise ValueError("an edit input handle is no longer held by this client")
            raise ValueError("a URL input cannot be mixed with uploaded files at OpenAI")
        return (image.filename, image.data, image.mime_type)

    async def _post(
        self, path: str, kwargs: dict[str, Any], task: TaskSpec, model: str, *, stream: bool
    ) -> Submission:
        splitter = B64Splitter(task.scratch_dir, max_image_bytes=_MAX_IMAGE_BYTES)
        try:
            async with self.open_stream(
                "POST", path, call="create", client_ref=task.task_id, **kwargs
            ) as response:
                try:
                    result = await self._read_answer(response, splitter, task, stream=stream)
                except SplitError as exc:
                    raise self.malformed(
                        _excerpt(response, bytes(splitter.skeleton[:_EXCERPT])),
                        str(exc),
                        call="create",
                        client_ref=task.task_id,
                    ) from None
                return self._submission(task, model, result, response.headers)
        except BaseException:
            splitter.discard()  # a failed answer leaves no temp file behind
            raise

    async def _read_answer(
        self, response: httpx.Response, splitter: B64Splitter, task: TaskSpec, *, stream: bool
    ) -> _Answer:
        """Feed the body to the splitter (images go straight to temp files) and read what
        the answer says: one JSON body, or SSE events when the call streamed."""
        events = stream and "text/event-stream" in response.headers.get("content-type", "")
        result: _Answer | None = None
        async for chunk in response.aiter_bytes():
            splitter.feed(chunk)
            if events:
                result = self._events(splitter, task, result)
        if not splitter.complete:
            raise SplitError("the answer ended inside an image")
        if events:
            result = self._events(splitter, task, result, final=True)
        else:
            result = _json_answer(bytes(splitter.skeleton), splitter.files)
        if result is None or not result.files:
            raise SplitError("the answer holds no image")
        return result

    def _events(
        self,
        splitter: B64Splitter,
        task: TaskSpec,
        result: _Answer | None,
        *,
        final: bool = False,
    ) -> _Answer | None:
        """Handle every complete SSE event so far: partials go to `on_partial` (then their
        file is deleted), a `*.completed` event's image is a result."""
        while splitter.complete:
            end = _event_end(bytes(splitter.skeleton))
            if end is None:
                if not final or not bytes(splitter.skeleton).strip():
                    break
                end = len(splitter.skeleton)
            data = _event_data(splitter.take_skeleton(end))
            if data is None:
                continue
            if data.get("error"):
                raise SplitError(f"the stream carried an error: {data['error']}")
            kind = str(data.get("type", ""))
            index = _file_index(data.get("b64_json"))
            if index is None or index >= len(splitter.files):
                continue
            if kind.endswith(".partial_image"):
                self._hand_partial(splitter.files[index], task)
            elif kind.endswith(".completed"):
                result = result or _Answer(files=[], usage=None, raw={})
                result.files.append(splitter.files[index])
                result.usage = _merge_usage(result.usage, data.get("usage"))
                result.raw = {k: v for k, v in data.items() if k != "b64_json"}
        return result

    def _hand_partial(self, name: str, task: TaskSpec) -> None:
        path = Path(name)
        try:
            if task.on_partial is not None:
                task.on_partial(path.read_bytes())  # a partial is a small preview
        finally:
            path.unlink(missing_ok=True)

    def _submission(
        self, task: TaskSpec, model: str, answer: _Answer, headers: httpx.Headers
    ) -> Submission:
        rates = TokenRates.lookup(self._prices, model)
        billed = cost_of_usage(answer.usage, rates) if rates is not None else None
        # OpenAI gives the call no id; x-request-id names it for support, our task id else.
        request_id = headers.get("x-request-id")
        job_id = request_id or task.task_id
        status = TaskStatus(
            state=TaskState.SUCCEEDED,
            billed_usd=billed,
            image_files=tuple(answer.files),
            raw=dict(answer.raw),
        )
        return Submission(
            provider=self.provider.name,
            task_id=job_id,
            poll_ref=job_id,
            state=TaskState.SUCCEEDED,
            request_id=request_id,
            billed_usd=billed,
            raw=dict(answer.raw),
            status=status,
        )


class _Answer:
    def __init__(self, files: list[str], usage: Any, raw: Mapping[str, Any]) -> None:
        self.files = files
        self.usage = usage
        self.raw = raw


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _error_fields(response: httpx.Response) -> Mapping[str, Any]:
    """OpenAI's `{"error": {message, type, param, code}}`, or {} for another body."""
    data = json_or_none(response)
    error = data.get("error") if isinstance(data, Mapping) else None
    return error if isinstance(error, Mapping) else {}


def _is_refusal(error: Mapping[str, Any]) -> bool:
    """A refusal of the content itself (another backend would refuse it too)."""
    code = error.get("code") or error.get("type")
    return code in _POLICY_CODES or error.get("type") == "image_generation_user_error"


def _excerpt(response: httpx.Response, body: bytes) -> httpx.Response:
    """A small stand-in for a streamed 2xx answer (its id header and the start of its
    skeleton, images already cut out), for the kit's malformed-answer error."""
    headers = {k: v for k, v in response.headers.items() if k.lower() == "x-request-id"}
    return httpx.Response(response.status_code, headers=headers, content=body)


def _file_index(value: Any) -> int | None:
    if isinstance(value, str) and value.startswith(FILE_MARK):
        tail = value[len(FILE_MARK) :]
        return int(tail) if tail.isdigit() else None
    return None


def _json_answer(skeleton: bytes, files: list[str]) -> _Answer:
    try:
        data = json.loads(skeleton)
    except ValueError as exc:
        raise SplitError(f"the body is not JSON ({exc})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise SplitError("the body has no `data` list")
    found = [_file_index(item.get("b64_json")) for item in data["data"] if isinstance(item, dict)]
    chosen = [files[index] for index in found if index is not None and index < len(files)]
    raw = {key: value for key, value in data.items() if key != "data"}
    return _Answer(files=chosen, usage=data.get("usage"), raw=raw)


def _event_end(skeleton: bytes) -> int | None:
    """Where the first complete SSE event ends (after its blank line), or None."""
    ends = [
        found + len(mark)
        for mark in (b"\n\n", b"\r\n\r\n", b"\r\r")
        if (found := skeleton.find(mark)) >= 0
    ]
    return min(ends) if ends else None


def _event_data(raw: bytes) -> dict[str, Any] | None:
    lines = raw.decode("utf-8", "replace").splitlines()
    data = "\n".join(line[5:].lstrip() for line in lines if line.startswith("data:"))
    if not data or data.strip() == "[DONE]":
        return None
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise SplitError(f"an event's data is not JSON ({exc})") from None
    return parsed if isinstance(parsed, dict) else None


def _merge_usage(total: Any, more: Any) -> Any:
    """Usage summed over the completed events of one call (one per image)."""
    if not isinstance(more, Mapping):
        return total
    if not isinstance(total, Mapping):
        return dict(more)
    merged: dict[str, Any] = dict(total)
    for key, value in more.items():
        if isinstance(value, int) and isinstance(merged.get(key), int):
            merged[key] = merged[key] + value
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge_usage(merged[key], value)
    return merged

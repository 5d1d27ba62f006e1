"""OpenAI's images API, translated: request bodies in, router fields out, responses back.

`parse_image_call` turns a `/v1/images/generations` JSON body or a `/v1/images/edits` form into
an `ImageCall` (the router's fields, plus what only the gateway needs), or raises an `ApiError`
naming the parameter, as OpenAI does. The rules (docs/gateway.md):

- `model`: `gpt-image-2`, `gpt-image-1.5`, or the name of a configured tier.
- `quality`: `low|medium|high`; `auto` leaves it unset; the DALL-E values `standard`/`hd`
  mean `medium`/`high`.
- parameters OpenAI defines that change nothing here (`moderation`, `style`,
  `output_compression`, `input_fidelity`, `stream: false`, `partial_images: 0`) are accepted
  and ignored; ones that ask for something we cannot give (`stream: true`, `partial_images`,
  `svg`, ...) are a 400; anything else is a 400 `unknown_parameter`, as OpenAI's own server does.
- imagerouter extensions: `tier`, `providers`, `max_cost_usd`.
- every text value is capped (`prompt` at OpenAI's 32,000 characters, every other field at
  `MAX_FIELD_CHARS`) and must be valid Unicode (a lone surrogate from a `\\ud800` JSON escape
  is refused): a 400 naming the field, before anything is held or sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from ..config import Config
from ..request import MODELS, ImageInput, ImageRequest
from .errors import bad_request

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_INPUT_IMAGES",
    "MAX_PROMPT_CHARS",
    "ImageCall",
    "ResponseFormat",
    "model_list",
    "parse_image_call",
    "shown",
]

ResponseFormat = Literal["b64_json", "url"]
Operation = Literal["generate", "edit"]

MAX_PROMPT_CHARS = 32_000  # OpenAI's own limit for GPT Image prompts
MAX_INPUT_IMAGES = 16  # OpenAI accepts up to 16 input images for an edit
MAX_FIELD_CHARS = 256  # `user`, `model`, `size`, ...: short by nature; held on the job
_MAX_NAME_CHARS = 64  # a parameter name
_MAX_LIST_ITEMS = 32  # `providers`
_SHOWN_CHARS = 64  # how much of a client's value an error message or log line repeats

_COMMON = frozenset(
    {"prompt", "model", "n", "size", "quality", "output_format", "background",
     "response_format", "user", "safety_identifier", "tier", "providers", "max_cost_usd"}
)
_EDIT_ONLY = frozenset({"image", "image[]", "mask"})
# Defined by OpenAI, no effect here: accepted and ignored.
_IGNORED = frozenset({"moderation", "style", "output_compression", "input_fidelity"})
# Defined by OpenAI, harmless only at these values.
_ONLY_IF = {"stream": (False, "false"), "partial_images": (0, "0")}
# Defined by OpenAI, asks for output we cannot produce.
_UNSUPPORTED = frozenset(
    {"complexity", "frame_count", "frame_duration_ms", "svg", "markup", "prompt_rewriter"}
)

_QUALITY = {"low": "low", "medium": "medium", "high": "high", "auto": None,
            "standard": "medium", "hd": "high"}
_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_BACKGROUNDS = ("auto", "transparent", "opaque")
_RESPONSE_FORMATS: tuple[ResponseFormat, ...] = ("b64_json", "url")


@dataclass(frozen=True)
class ImageCall:
    """One validated images request: what the router gets and how to answer."""

    operation: Operation
    prompt: str
    fields: dict[str, Any]  # router request fields: model or tier, n, size, quality, ...
    response_format: ResponseFormat
    requested_model: str | None = None
    user: str | None = None
    images: tuple[ImageInput, ...] = ()
    mask: ImageInput | None = None
    ignored: tuple[str, ...] = field(default=())

    def build_request(self) -> ImageRequest:
        """The router's own validation (RequestValidationError on a bad field)."""
        extra: dict[str, Any] = {}
        if self.images:
            extra["images"] = self.images
        if self.mask is not None:
            extra["mask"] = self.mask
        return ImageRequest.build(prompt=self.prompt, **self.fields, **extra)

    def router_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.fields)
        if self.mask is not None:
            kwargs["mask"] = self.mask
        return kwargs


def parse_image_call(
    values: Mapping[str, Any],
    *,
    operation: Operation,
    config: Config,
    response_format_default: ResponseFormat,
    images: tuple[ImageInput, ...] = (),
    mask: ImageInput | None = None,
) -> ImageCall:
    """Validate OpenAI parameters (JSON values, or form strings for edits)."""
    allowed = _COMMON | (_EDIT_ONLY if operation == "edit" else frozenset())
    _screen(values)
    ignored: list[str] = []
    for name, value in values.items():
        if name in allowed:
            continue
        if value is None or name in _IGNORED:
            ignored.append(name)
        elif name in _ONLY_IF:
            if value not in _ONLY_IF[name]:
                raise bad_request(
                    f"{name}={shown(repr(value))} is not supported: the gateway answers with "
                    "whole images only (use POST /v1/images/jobs for long jobs)",
                    param=name, code="unsupported_parameter",
                )
            ignored.append(name)
        elif name in _UNSUPPORTED:
            raise bad_request(
                f"{name} is not supported by imagerouter", param=name,
                code="unsupported_parameter",
            )
        else:
            raise bad_request(f"Unknown parameter: '{name}'.", param=name,
                              code="unknown_parameter")
    get = {k: v for k, v in values.items() if v is not None}.get
    prompt = _prompt(get("prompt"))
    fields: dict[str, Any] = {}
    model = _text(get("model"), "model")
    _model_or_tier(model, _text(get("tier"), "tier"), config, fields)
    if (n := get("n")) is not None:
        fields["n"] = _count(n)
    if (size := _text(get("size"), "size")) is not None:
        fields["size"] = size
    quality = _choice(get("quality"), "quality", _QUALITY)
    if quality is not None:
        fields["quality"] = quality
    if (fmt := _choice(get("output_format"), "output_format", _FORMATS)) is not None:
        fields["output_format"] = fmt
    if (background := _text(get("background"), "background")) is not None:
        if background not in _BACKGROUNDS:
            raise _not_one_of("background", background, _BACKGROUNDS)
        fields["background"] = background
    if (providers := get("providers")) is not None:
        fields["providers"] = _providers(providers)
    if (cost := get("max_cost_usd")) is not None:
        fields["max_cost_usd"] = _money(cost)
    response_format = _text(get("response_format"), "response_format") or response_format_default
    if response_format not in _RESPONSE_FORMATS:
        raise _not_one_of("response_format", response_format, _RESPONSE_FORMATS)
    user = _text(get("user"), "user") or _text(get("safety_identifier"), "safety_identifier")
    return ImageCall(
        operation=operation,
        prompt=prompt,
        fields=fields,
        response_format="url" if response_format == "url" else "b64_json",
        requested_model=model,
        user=user,
        images=images,
        mask=mask,
        ignored=tuple(ignored),
    )


def shown(text: str) -> str:
    """A client's text made safe to repeat in a message or log line: at most 64 characters,
    no lone surrogates (they cannot be encoded as UTF-8), no line breaks."""
    clipped = text[:_SHOWN_CHARS] + ("..." if len(text) > _SHOWN_CHARS else "")
    clipped = clipped.encode("utf-8", "backslashreplace").decode("utf-8")
    return clipped.replace("\r", "\\r").replace("\n", "\\n")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _screen(values: Mapping[str, Any]) -> None:
    """Caps and Unicode checks on every name and text value, known parameter or not."""
    for name, value in values.items():
        if len(name) > _MAX_NAME_CHARS or not _is_unicode(name):
            raise bad_request(f"Unknown parameter: '{shown(name)}'.", param=shown(name),
                              code="unknown_parameter")
        cap = MAX_PROMPT_CHARS if name == "prompt" else MAX_FIELD_CHARS
        items = value if isinstance(value, list) else [value]
        if len(items) > _MAX_LIST_ITEMS:
            raise bad_request(f"{name} has more than {_MAX_LIST_ITEMS} items", param=name)
        for item in items:
            if not isinstance(item, str):
                continue
            if not _is_unicode(item):
                raise bad_request(
                    f"{name} is not valid Unicode text (it holds a lone surrogate)",
                    param=name, code="invalid_encoding",
                )
            if len(item) > cap:
                raise bad_request(f"{name} is longer than {cap} characters", param=name,
                                  code="string_above_max_length")


def _prompt(value: Any) -> str:
    if value is None:
        raise bad_request("Missing required parameter: 'prompt'.", param="prompt",
                          code="missing_required_parameter")
    if not isinstance(value, str) or not value.strip():
        raise bad_request("prompt must be a non-empty string", param="prompt")
    if len(value) > MAX_PROMPT_CHARS:
        raise bad_request(f"prompt is longer than {MAX_PROMPT_CHARS} characters", param="prompt",
                          code="string_above_max_length")
    return value


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string, not {type(value).__name__}", param=name,
                          code="invalid_type")
    return value.strip()


def _model_or_tier(
    model: str | None, tier: str | None, config: Config, fields: dict[str, Any]
) -> None:
    if tier is not None:
        if tier not in config.tiers:
            raise _unknown_model("tier", tier, config)
        fields["tier"] = tier
    if model is None:
        return
    if model in MODELS:
        if tier is None:
            fields["model"] = model
        return
    if model in config.tiers:
        if tier is not None and tier != model:
            raise bad_request(f"model {model!r} is a tier and tier is {tier!r}: give one",
                              param="model")
        fields["tier"] = model
        return
    raise _unknown_model("model", model, config)


def _unknown_model(param: str, value: str, config: Config) -> Exception:
    tiers = ", ".join(sorted(config.tiers)) or "none are configured"
    return bad_request(
        f"The model '{value}' does not exist here; use {', '.join(MODELS)} or a tier "
        f"({tiers})",
        param=param, code="model_not_found",
    )


def _count(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request("n must be a whole number from 1 to 10", param="n", code="invalid_type")
    if not 1 <= value <= 10:
        raise bad_request(f"{value} is not allowed for n; use 1 to 10", param="n")
    return value


def _choice(value: Any, name: str, table: Mapping[str, str | None]) -> str | None:
    text = _text(value, name)
    if text is None:
        return None
    if text.lower() not in table:
        raise _not_one_of(name, text, tuple(table))
    return table[text.lower()]


def _not_one_of(name: str, value: str, allowed: tuple[str, ...]) -> Exception:
    return bad_request(
        f"Invalid value for {name}: '{value}'; use one of {', '.join(allowed)}", param=name
    )


def _providers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise bad_request("providers must be a list of provider names", param="providers",
                          code="invalid_type")
    return tuple(value)


def _money(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal | float):
        raise bad_request("max_cost_usd must be a number", param="max_cost_usd",
                          code="invalid_type")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise bad_request("max_cost_usd must be a number", param="max_cost_usd") from None
    if not amount.is_finite() or amount <= 0:
        raise bad_request("max_cost_usd must be a positive amount in USD", param="max_cost_usd")
    return amount


def model_list(config: Config, created: int) -> dict[str, Any]:
    """`GET /v1/models`: the two models, then every tier (with its variants)."""
    data: list[dict[str, Any]] = [
        {"id": name, "object": "model", "created": created, "owned_by": "imagerouter",
         "imagerouter": {"kind": "model"}}
        for name in MODELS
    ]
    for name, variants in sorted(config.tiers.items()):
        data.append(
            {"id": name, "object": "model", "created": created, "owned_by": "imagerouter",
             "imagerouter": {"kind": "tier", "default": name == config.default_tier,
                             "variants": [variant.label for variant in variants]}}
        )
    return {"object": "list", "data": data}

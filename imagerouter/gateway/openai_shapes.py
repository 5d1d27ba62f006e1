"""OpenAI's images API, translated: request bodies in, router fields out, responses back.

`parse_image_call` turns a `/v1/images/generations` JSON body or a `/v1/images/edits` form into
an `ImageCall` (the router's fields, plus what only the gateway needs), or raises an `ApiError`
naming the parameter, as OpenAI does. The rules (docs/gateway.md):

- `model`: `gpt-image-2`, `gpt-image-1.5`, a dated snapshot of one (`gpt-image-2-2026-04-21`),
  `chatgpt-image-latest`, an alias from `gateway.model_aliases`, or a configured tier.
- `quality`: `low|medium|high`; `auto` leaves it unset; the DALL-E values `standard`/`hd`
  mean `medium`/`high`.
- validated as OpenAI does and kept on the call: `output_compression` (0-100),
  `moderation` (`low|auto`), `input_fidelity` (`low|high`), `stream`, `partial_images` (0-3);
  `moderation` and `input_fidelity` also go to the router, for the backends that take them;
- `size`: `auto` or a WxH that passes OpenAI's gpt-image rule (both sides divisible by 16,
  long:short at most 3:1, at most 3840 on the long edge, 655,360 to 8,294,400 pixels);
  `style` is accepted and ignored; parameters that ask for output we cannot give (`svg`, ...)
  are a 400; anything else is a 400 `unknown_parameter`, as OpenAI's own server does.
- JSON numbers must be numbers (`n: "2"` is a 400, as at OpenAI); form fields are text.
- an edit's mask must be a PNG of the first image's size.
- imagerouter extensions: `tier`, `providers`, `max_cost_usd`, `size_policy`.
- every text value is capped (`prompt` at OpenAI's 32,000 characters, every other field at
  `MAX_FIELD_CHARS`) and must be valid Unicode (a lone surrogate from a `\\ud800` JSON escape
  is refused): a 400 naming the field, before anything is held or sent.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from ..config import Config
from ..geometry import SIZE_POLICIES, openai_size_problem, parse_size
from ..request import MODELS, ImageInput, ImageRequest
from .errors import bad_request

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_INPUT_IMAGES",
    "MAX_PROMPT_CHARS",
    "AnswerShape",
    "ImageCall",
    "ResponseFormat",
    "model_list",
    "parse_image_call",
    "resolve_model",
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
     "response_format", "user", "safety_identifier", "tier", "providers", "max_cost_usd",
     "size_policy"}
)
_EDIT_ONLY = frozenset({"image", "image[]", "mask"})
# Defined by OpenAI, validated and kept on the call (not router fields).
_OPENAI_ONLY = frozenset({"moderation", "output_compression", "input_fidelity", "stream",
                          "partial_images"})
# Defined by OpenAI for DALL-E only: accepted and ignored.
_IGNORED = frozenset({"style"})
# Defined by OpenAI, asks for output we cannot produce.
_UNSUPPORTED = frozenset(
    {"complexity", "frame_count", "frame_duration_ms", "svg", "markup", "prompt_rewriter"}
)

_QUALITY = {"low": "low", "medium": "medium", "high": "high", "auto": None,
            "standard": "medium", "hd": "high"}
_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_BACKGROUNDS = ("auto", "transparent", "opaque")
_RESPONSE_FORMATS: tuple[ResponseFormat, ...] = ("b64_json", "url")
_MODERATION = ("low", "auto")
_FIDELITY = ("low", "high")
# Names OpenAI serves that are one of our families.
_BUILTIN_ALIASES = {"chatgpt-image-latest": "gpt-image-1.5"}
_SNAPSHOT = re.compile(r"^(?P<family>.+)-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class AnswerShape:
    """What an answer echoes of its request, kept after the call's inputs are dropped."""

    operation: Operation
    prompt_chars: int
    quality: str | None
    background: str
    output_compression: int | None
    stream: bool
    partial_images: int


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
    quality: str | None = None  # as asked (None: the backend's choice)
    background: str = "auto"
    output_compression: int | None = None
    moderation: str | None = None
    input_fidelity: str | None = None
    stream: bool = False
    partial_images: int = 0
    # The `Idempotency-Key` header and its scope (a hash of the caller's gateway key).
    idempotency_key: str | None = None
    idempotency_scope: str = ""

    def answer_shape(self) -> AnswerShape:
        return AnswerShape(
            operation=self.operation, prompt_chars=len(self.prompt), quality=self.quality,
            background=self.background, output_compression=self.output_compression,
            stream=self.stream, partial_images=self.partial_images,
        )

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
        if self.idempotency_key is not None:
            kwargs["idempotency_key"] = self.idempotency_key
            kwargs["idempotency_scope"] = self.idempotency_scope
        return kwargs


def parse_image_call(
    values: Mapping[str, Any],
    *,
    operation: Operation,
    config: Config,
    response_format_default: ResponseFormat,
    images: tuple[ImageInput, ...] = (),
    mask: ImageInput | None = None,
    form: bool = False,
) -> ImageCall:
    """Validate OpenAI parameters: JSON values, or (`form=True`) an edit form's text fields."""
    allowed = _COMMON | _OPENAI_ONLY | (_EDIT_ONLY if operation == "edit" else frozenset())
    _screen(values)
    ignored: list[str] = []
    for name, value in values.items():
        if name in allowed:
            continue
        if value is None or name in _IGNORED:
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
    _model_or_tier(resolve_model(model, config), _text(get("tier"), "tier"), config, fields)
    if (n := get("n")) is not None:
        fields["n"] = _whole(n, "n", 1, 10, form=form)
    if (size := _text(get("size"), "size")) is not None:
        _check_size(size, fields.get("model"))
        fields["size"] = size
    if (policy := _text(get("size_policy"), "size_policy")) is not None:
        if policy not in SIZE_POLICIES:
            raise _not_one_of("size_policy", policy, SIZE_POLICIES)
        fields["size_policy"] = policy
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
    compression = get("output_compression")
    partials = get("partial_images")
    moderation = _text(get("moderation"), "moderation")
    if moderation is not None and moderation not in _MODERATION:
        raise _not_one_of("moderation", moderation, _MODERATION)
    fidelity = _text(get("input_fidelity"), "input_fidelity")
    if fidelity is not None and fidelity not in _FIDELITY:
        raise _not_one_of("input_fidelity", fidelity, _FIDELITY)
    if mask is not None and images:
        _check_mask(mask, images[0])
    # Router fields too: forwarded by the backends that take them (docs/gateway.md).
    if moderation is not None:
        fields["moderation"] = moderation
    if fidelity is not None:
        fields["input_fidelity"] = fidelity
    if partials is not None and _flag(get("stream"), "stream", form=form):
        # A backend that streams (openai) sends these on as progress, then as SSE events.
        fields["partial_images"] = _whole(partials, "partial_images", 0, 3, form=form)
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
        quality=quality,
        background=fields.get("background", "auto"),
        output_compression=None if compression is None else _whole(
            compression, "output_compression", 0, 100, form=form),
        moderation=moderation,
        input_fidelity=fidelity,
        stream=_flag(get("stream"), "stream", form=form),
        partial_images=0 if partials is None else _whole(
            partials, "partial_images", 0, 3, form=form),
    )


def resolve_model(model: str | None, config: Config) -> str | None:
    """An operator's alias, a built-in alias, or a dated snapshot -> the model or tier name."""
    if model is None or model in MODELS or model in config.tiers:
        return model
    aliased = config.gateway.model_aliases.get(model) or _BUILTIN_ALIASES.get(model)
    if aliased is not None:
        return aliased
    snapshot = _SNAPSHOT.match(model)
    if snapshot is not None and snapshot["family"] in MODELS:
        return snapshot["family"]
    return model


def _whole(value: Any, name: str, low: int, high: int, *, form: bool) -> int:
    """A whole number; from a form, its text (a form has no numbers)."""
    if form and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(
            f"Invalid type for '{name}': expected an integer, but got "
            f"{'a string' if isinstance(value, str) else type(value).__name__} instead.",
            param=name, code="invalid_type",
        )
    if not low <= value <= high:
        raise bad_request(
            f"Invalid '{name}': {value} is not allowed; use a whole number from {low} to "
            f"{high}.",
            param=name, code="integer_out_of_range" if name != "n" else "invalid_value",
        )
    return value


def _flag(value: Any, name: str, *, form: bool) -> bool:
    if form and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"Invalid type for '{name}': expected a boolean.", param=name,
                          code="invalid_type")
    return value


_FIXED_SIZES_15 = ("1024x1024", "1536x1024", "1024x1536")


def _check_size(size: str, model: str | None) -> None:
    """OpenAI's rule for a gpt-image WxH (divisible by 16, within 3:1, the pixel limits; the
    three classic sizes only for gpt-image-1.5), as its 400. Text that is no WxH at all is left
    to the router, whose message names the form. A tier's sizes are the tier's business."""
    if size.strip().lower() == "auto":
        return
    if model == "gpt-image-1.5" and size.strip().lower() not in _FIXED_SIZES_15:
        raise bad_request(
            f"Invalid size '{shown(size)}'. Supported sizes for gpt-image-1.5 are "
            f"{', '.join(_FIXED_SIZES_15)}, and auto.",
            param="size", code="invalid_value",
        )
    try:
        width, height = parse_size(size)
    except ValueError:
        return
    problem = openai_size_problem(width, height)
    if problem is not None:
        raise bad_request(problem, param="size", code="invalid_value")


def _check_mask(mask: ImageInput, image: ImageInput) -> None:
    """OpenAI's rule: the mask is a PNG of the (first) image's size."""
    if mask.kind != "bytes" or image.kind != "bytes":
        return  # paths and URLs are checked by the router when it reads them
    mask_size = _png_size(mask.data, "mask")
    try:
        with Image.open(io.BytesIO(image.data or b"")) as opened:
            image_size = opened.size
    except (UnidentifiedImageError, OSError, ValueError):
        return  # the router names the unreadable image
    if mask_size != image_size:
        raise bad_request(
            f"Invalid mask: the mask is {mask_size[0]}x{mask_size[1]} and the image is "
            f"{image_size[0]}x{image_size[1]}; they must be the same size.",
            param="mask", code="invalid_image",
        )


def _png_size(data: bytes | None, name: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data or b"")) as opened:
            if opened.format == "PNG":
                return opened.size
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    raise bad_request(f"Invalid {name}: it must be a PNG image.", param=name,
                      code="invalid_image_format")


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

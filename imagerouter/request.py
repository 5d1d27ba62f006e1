"""The normalized image request: validated once, before anything else happens.

`ImageRequest.build(**fields)` is the front door. It accepts what users type (paths, bytes,
URLs, `"1536x1024"`, `"16:9"`, floats for money) and either returns a frozen request or raises
one `RequestValidationError` naming the field and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import RequestValidationError
from .geometry import RESOLUTIONS, SIZE_POLICIES, Ratio, Resolution, SizePolicy, parse_size
from .model_families import MODELS, ModelName
from .urls import strip_credentials

__all__ = [
    "BACKGROUNDS",
    "MODELS",
    "OUTPUT_FORMATS",
    "QUALITIES",
    "Background",
    "Geometry",
    "ImageInput",
    "ImageRequest",
    "ModelName",
    "Operation",
    "OutputFormat",
    "Quality",
]

Quality = Literal["low", "medium", "high"]
OutputFormat = Literal["png", "jpeg", "webp"]
Background = Literal["auto", "transparent", "opaque"]
Operation = Literal["generate", "edit"]

QUALITIES: tuple[Quality, ...] = ("low", "medium", "high")
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("png", "jpeg", "webp")
BACKGROUNDS: tuple[Background, ...] = ("auto", "transparent", "opaque")
MAX_IMAGES = 10


class ImageInput(BaseModel):
    """One input image (or mask) for an edit: a local path, raw bytes, or an http(s) URL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["path", "bytes", "url"]
    path: Path | None = None
    data: bytes | None = Field(default=None, repr=False)
    url: str | None = None
    label: str = ""

    @classmethod
    def coerce(cls, value: Any, label: str = "") -> ImageInput:
        """Turn what a user passes (str, Path, bytes, ImageInput) into an ImageInput."""
        if isinstance(value, ImageInput):
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
            return cls(kind="bytes", data=data, label=label or f"<{len(data)} bytes>")
        if isinstance(value, str) and _is_url(value):
            # The URL goes to the provider as given; its name (what the ledger, logs and
            # messages show) never carries `user:password@`.
            return cls(kind="url", url=value, label=label or strip_credentials(value))
        if isinstance(value, str | Path):
            path = Path(value).expanduser()
            return cls(kind="path", path=path, label=label or str(path))
        raise TypeError(f"an input image must be a path, bytes or an http(s) URL, not {value!r}")

    @property
    def name(self) -> str:
        """What error messages call this input."""
        if self.label:
            return self.label
        if self.url is not None:
            return strip_credentials(self.url)
        return str(self.path or "<bytes>")


@dataclass(frozen=True)
class Geometry:
    """The requested size, normalized. `kind` says which of the three forms was asked for."""

    kind: Literal["auto", "ratio", "pixels"]
    ratio: Ratio | None = None
    resolution: Resolution | None = None
    width: int | None = None
    height: int | None = None

    def describe(self) -> str:
        if self.kind == "auto":
            return "auto"
        if self.kind == "pixels":
            return f"{self.width}x{self.height}"
        return f"{self.ratio} at {self.resolution}"


class ImageRequest(BaseModel):
    """A validated, immutable request. Build it with `ImageRequest.build(...)`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str
    model: ModelName = "gpt-image-2"
    quality: Quality | None = None
    size: str | None = None
    aspect_ratio: str | None = None
    resolution: Resolution | None = None
    n: int = Field(default=1, ge=1, le=MAX_IMAGES)
    output_format: OutputFormat = "png"
    background: Background = "auto"
    images: tuple[ImageInput, ...] = ()
    mask: ImageInput | None = None
    tier: str | None = None
    providers: tuple[str, ...] | None = None
    max_cost_usd: Decimal | None = Field(default=None, gt=0)
    allow_url_inputs: bool = False
    # What a WxH size promises (None: the config's routing.size_policy, "exact" by default).
    size_policy: SizePolicy | None = None
    # OpenAI's own knobs, forwarded by the backends that take them (docs/gateway.md).
    moderation: Literal["auto", "low"] | None = None
    input_fidelity: Literal["high", "low"] | None = None
    # Partial images (0-3) to stream while the image is made (the gateway's
    # `partial_images`): a backend that streams hands them to progress; the others ignore it.
    partial_images: int = Field(default=0, ge=0, le=3)

    @field_validator("model")
    @classmethod
    def _declared_model(cls, value: str) -> str:
        # Which families exist is the plugins' to say (imagerouter/model_families.py).
        if value not in MODELS:
            raise ValueError("is not a model any provider declares")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("the prompt must not be empty")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if value == "auto":
            return value
        try:
            width, height = parse_size(value)
        except ValueError:
            message = f"{value!r} is not allowed; use WxH (e.g. 1536x1024) or auto"
            raise ValueError(message) from None
        if max(width, height) > 16384:
            raise ValueError(f"{value!r} is too large; each side must be at most 16384")
        return f"{width}x{height}"

    @field_validator("aspect_ratio")
    @classmethod
    def _aspect_ratio(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if value == "auto":
            return value
        try:
            ratio = Ratio.parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not allowed; use W:H (e.g. 16:9) or auto") from None
        if max(ratio.value, 1 / ratio.value) > 4:
            raise ValueError(f"{value!r} is too extreme; the long side may be at most 4x the short")
        return str(ratio)

    @field_validator("providers")
    @classmethod
    def _providers(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("name at least one provider, or leave it out for all")
        return value

    @model_validator(mode="before")
    @classmethod
    def _coerce_inputs(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        _check_text(data)
        images = data.get("images")
        if images is not None:
            if isinstance(images, str | Path | bytes | ImageInput):
                images = [images]
            if not isinstance(images, list | tuple):
                raise _FieldError(
                    "images", f"{type(images).__name__} is not allowed; give a list of paths, "
                    "bytes or http(s) URLs"
                )
            try:
                data["images"] = tuple(ImageInput.coerce(item) for item in images)
            except TypeError as exc:
                raise _FieldError("images", str(exc)) from None
        if data.get("mask") is not None:
            try:
                data["mask"] = ImageInput.coerce(data["mask"])
            except TypeError as exc:
                raise _FieldError("mask", str(exc)) from None
        providers = data.get("providers")
        if isinstance(providers, str):
            data["providers"] = tuple(p.strip() for p in providers.split(",") if p.strip())
        cost = data.get("max_cost_usd")
        if isinstance(cost, float):
            data["max_cost_usd"] = Decimal(str(cost))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ImageRequest:
        if self.size is not None and (self.aspect_ratio or self.resolution):
            raise _FieldError(
                "size", "give either size or aspect_ratio + resolution, not both"
            )
        if self.mask is not None and not self.images:
            raise _FieldError("mask", "a mask needs at least one input image (images)")
        if self.background == "transparent" and self.output_format == "jpeg":
            raise _FieldError(
                "background", "'transparent' needs output_format png or webp (jpeg has no alpha)"
            )
        if not self.allow_url_inputs:
            for item in (*self.images, *([self.mask] if self.mask else [])):
                if item.kind == "url":
                    raise _FieldError(
                        "images",
                        f"{item.name} is a URL; URL inputs are passed to the provider only with "
                        "allow_url_inputs=True (the provider will fetch it)",
                    )
        return self

    @classmethod
    def build(cls, **fields: Any) -> ImageRequest:
        """Validate `fields` into a request, or raise one RequestValidationError."""
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            return cls.model_validate(fields)
        except _FieldError as exc:
            raise RequestValidationError(exc.field, exc.message) from None
        except ValidationError as exc:
            raise _to_request_error(exc) from None

    @property
    def operation(self) -> Operation:
        return "edit" if self.images else "generate"

    @property
    def geometry(self) -> Geometry:
        """The size in normalized form; with nothing given, 1:1 at 1k (1024x1024)."""
        if self.size == "auto" or self.aspect_ratio == "auto":
            return Geometry(kind="auto", resolution=self.resolution)
        if self.size is not None:
            width, height = parse_size(self.size)
            ratio = Ratio.of(width, height)
            return Geometry(kind="pixels", ratio=ratio, width=width, height=height)
        ratio = Ratio.parse(self.aspect_ratio) if self.aspect_ratio else Ratio(1, 1)
        return Geometry(kind="ratio", ratio=ratio, resolution=self.resolution or "1k")

    def with_overrides(self, **fields: Any) -> ImageRequest:
        """A copy with some fields replaced (a tier variant), re-validated.

        Size fields merge sensibly: a variant's `size` replaces the whole size description; a
        variant's `resolution` keeps the request's aspect ratio (a request `WxH` becomes its
        ratio); a variant's `aspect_ratio` replaces the request's ratio or `WxH`.
        """
        # Field values as they are (model_dump would turn input images into dicts).
        data = {name: value for name, value in self if value is not None}
        fields = {k: v for k, v in fields.items() if v is not None}
        if "size" in fields:
            data.pop("aspect_ratio", None)
            data.pop("resolution", None)
        elif "resolution" in fields or "aspect_ratio" in fields:
            size = data.pop("size", None)
            if size and size != "auto" and "aspect_ratio" not in fields:
                width, height = parse_size(size)
                data["aspect_ratio"] = str(Ratio.of(width, height))
            elif size == "auto" and "aspect_ratio" not in fields:
                data["aspect_ratio"] = "auto"
        data.update(fields)
        return ImageRequest.build(**data)

    def public_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (no image bytes) for logs, the ledger and `--json`."""
        data = self.model_dump(exclude={"images", "mask"}, exclude_none=True, mode="json")
        data["images"] = [item.name for item in self.images]
        if self.mask is not None:
            data["mask"] = self.mask.name
        return data


def _check_text(data: Mapping[str, Any]) -> None:
    """Every text field must encode as UTF-8. A lone surrogate (what Python makes of non-UTF-8
    bytes in argv, or what JSON's `\\ud800` decodes to) would otherwise pass validation and
    fail later: in the ledger, the HTTP body, or the terminal, after the job was paid for."""
    for name, value in data.items():
        items = value if isinstance(value, list | tuple) else (value,)
        for item in items:
            text = item.url if isinstance(item, ImageInput) else item
            if not isinstance(text, str):
                continue
            if name in ("images", "mask") and not _is_url(text):
                continue  # a local file name may be any bytes the filesystem allows
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _FieldError(
                    name,
                    f"is not valid UTF-8 text (an undecodable character at position "
                    f"{exc.start}); check the terminal or file encoding",
                ) from None


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


class _FieldError(Exception):
    """Raised by cross-field checks; not a ValueError, so pydantic lets it through."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


_ALLOWED: dict[str, str] = {
    "quality": ", ".join(QUALITIES),
    "resolution": ", ".join(RESOLUTIONS),
    "output_format": ", ".join(OUTPUT_FORMATS),
    "background": ", ".join(BACKGROUNDS),
    "n": f"a whole number from 1 to {MAX_IMAGES}",
    "max_cost_usd": "a positive amount in USD",
    "size_policy": ", ".join(SIZE_POLICIES),
    "moderation": "auto, low",
    "input_fidelity": "high, low",
}


def _to_request_error(exc: ValidationError) -> RequestValidationError:
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ())]
    field = loc[0] if loc else "request"
    if error.get("type") == "extra_forbidden":
        allowed = ", ".join(sorted(ImageRequest.model_fields))
        return RequestValidationError(field, f"is not a request field; the fields are {allowed}")
    if error.get("type") == "missing":
        return RequestValidationError(field, "is required")
    message = str(error.get("msg", "is not valid"))
    message = message.removeprefix("Value error, ")
    given = error.get("input")
    if field in _ALLOWED:
        message = f"{given!r} is not allowed; use {_ALLOWED[field]}"
    elif field == "model":  # the families the plugins declare, known only at run time
        message = f"{given!r} is not allowed; use {', '.join(MODELS)}"
    return RequestValidationError(".".join(loc) or field, message)


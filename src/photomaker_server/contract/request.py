"""The request: fal's ``fal-ai/photomaker`` input (names, types, defaults, rules), one model for every process.

``GenerationOptions`` holds what the engine needs; ``PhotoMakerInput`` adds the file inputs and delivery options of
the HTTP request. Torch-free on purpose: the API validates a request at submit with the very model the worker parses
the stored request into and the engine runs on, so a request accepted at submit is never rejected later for a rule
the API did not know. Rules that depend on the deployment (trigger word, maximum number of images, pixel limit)
come from the pydantic validation *context* (:func:`validation_context`).
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .styles import default_style, style_names
from ..urls import MAX_URL_CHARS
from ..settings import Settings

DEFAULT_TRIGGER_WORD = "img"
DEFAULT_MAX_NUM_IMAGES = 4
MAX_SEED = 2**63 - 1

BasePipeline = Literal["photomaker", "photomaker-style"]
PhotoMakerVersion = Literal["v1", "v2"]
StyleName = Literal[tuple(style_names())]  # type: ignore[valid-type]

#: fal's size presets of its other image endpoints, as (width, height).
IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
ImageSizePreset = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
DEFAULT_SIZE = IMAGE_SIZE_PRESETS["square_hd"]


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(1024, ge=64, le=4096, description="Width in pixels, a multiple of 8.")
    height: int = Field(1024, ge=64, le=4096, description="Height in pixels, a multiple of 8.")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE works on 8x8 blocks), got {value}")
        return value


def _context(info: ValidationInfo, key: str, default: Any) -> Any:
    return (info.context or {}).get(key, default)


def check_trigger_word(prompt: str, trigger_word: str = DEFAULT_TRIGGER_WORD) -> None:
    """Enforce PhotoMaker's prompt rule: a class word followed by the trigger word, exactly once.

    The tokenizer splits the trigger word out wherever the exact (case-sensitive) text occurs, so counting
    substrings here agrees with what the model will see.
    """
    count = prompt.count(trigger_word)
    example = f"e.g. 'a photo of a man {trigger_word}, film grain'"
    if count != 1:
        found = "none" if count == 0 else f"{count} times"
        raise ValueError(
            f"the prompt must contain the trigger word '{trigger_word}' exactly once, right after the class word "
            f"(man, woman, boy, girl, person, ...), {example}; found it {found}"
        )
    if not re.search(r"\w", prompt[: prompt.index(trigger_word)]):
        raise ValueError(
            f"the trigger word '{trigger_word}' must follow a class word that names the person, {example}"
        )


class GenerationFields(BaseModel):
    """Every non-file field of the request with its shape and ranges, and none of the deployment's rules: what a
    request validated at submit is read back as (``contract.stored.StoredRequest``) and what the engine runs on."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        ...,
        min_length=1,
        max_length=2000,
        description="The prompt. Name the person with a class word followed by the trigger word: "
        "'a photo of a man img'.",
        examples=["portrait photo of a man img, film grain"],
    )
    base_pipeline: BasePipeline = Field(
        "photomaker",
        description="'photomaker': realistic base (RealVisXL); 'photomaker-style': stylised base (SDXL 1.0).",
    )
    initial_image_strength: float = Field(
        0.5, ge=0.0, le=1.0, description="How far to move away from the initial image: 0 keeps it, 1 ignores it."
    )
    style: StyleName = Field(default_style(), description="Style template applied to the prompt.")  # type: ignore[valid-type]
    negative_prompt: str = Field("", max_length=2000, description="What the image should not show.")
    num_inference_steps: int = Field(50, ge=1, le=100, description="Denoising steps.")
    style_strength: int = Field(
        20, ge=15, le=50, description="Percent of the steps run on the text alone before the ID is merged in."
    )
    num_images: int = Field(1, ge=1, description="Images to generate in one batch.")
    guidance_scale: float = Field(5.0, ge=0.1, le=10.0, description="Classifier-free guidance scale.")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Same seed, same settings, same image. Absent: a random seed."
    )
    image_size: Union[ImageSize, ImageSizePreset, None] = Field(  # noqa: UP007 (pydantic schema order)
        None,
        description="Output size: a preset or {width, height}. Default square_hd (1024x1024); with an "
        "initial image, its aspect ratio at about one megapixel.",
    )

    photomaker_version: Optional[PhotoMakerVersion] = Field(  # noqa: UP007 (pydantic schema order)
        None,
        validate_default=True,
        description="Beyond fal: 'v1' (fal's model) or 'v2' (PhotoMaker V2: adds an InsightFace face embedding for "
        "better likeness, notably from one photo; photos without a detectable face are skipped). Absent: the "
        "server's default (v1 unless configured).",
    )


class GenerationOptions(GenerationFields):
    """Every non-file field of the request, validated with the deployment's rules (the validation *context*)."""

    @field_validator("photomaker_version")
    @classmethod
    def _version(cls, value: str | None, info: ValidationInfo) -> str:
        """An absent version becomes the deployment's default here, so the stored request names the one it ran."""
        value = value or _context(info, "default_version", "v1")
        if value == "v2" and not _context(info, "enable_v2", True):
            raise ValueError("PhotoMaker v2 is not enabled on this server; use 'v1'")
        return value

    @field_validator("prompt")
    @classmethod
    def _trigger(cls, value: str, info: ValidationInfo) -> str:
        check_trigger_word(value, _context(info, "trigger_word", DEFAULT_TRIGGER_WORD))
        return value

    @field_validator("num_images")
    @classmethod
    def _max_images(cls, value: int, info: ValidationInfo) -> int:
        limit = _context(info, "max_num_images", DEFAULT_MAX_NUM_IMAGES)
        if value > limit:
            raise ValueError(f"at most {limit} images per request on this server, got {value}")
        return value

    @field_validator("image_size")
    @classmethod
    def _pixel_limit(cls, value: ImageSize | str | None, info: ValidationInfo) -> ImageSize | str | None:
        limit = _context(info, "max_pixels", None)
        if limit and isinstance(value, ImageSize) and value.width * value.height > limit:
            raise ValueError(f"image_size is larger than this server's limit of {limit} pixels")
        return value


def error_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Each problem as ``{loc, msg, type}`` with pydantic's "Value error, " prefix removed and without the input
    (which can be a 30 MB data URI): the shape of fal's 422 ``detail`` entries, minus the ``body`` prefix."""
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        details.append({"loc": list(error["loc"]), "msg": message, "type": error["type"]})
    return details


OutputFormat = Literal["png", "jpeg", "webp"]
_URL_HELP = "An http(s) URL, a data: URI, or a URL of this service's storage."


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_url(value: str) -> str:
    head = value[:16]  # a scheme we accept is shorter; splitting the whole value would copy a 30 MB data URI
    scheme = head.split(":", 1)[0].lower() if ":" in head else ""
    if scheme not in ("http", "https", "data"):
        raise ValueError("must be an http(s) URL or a data: URI")
    if scheme != "data" and len(value) > MAX_URL_CHARS:
        raise ValueError(f"an http(s) URL may be at most {MAX_URL_CHARS} characters long")
    return value


def _check_text(value: str) -> None:
    """Text any store can keep: PostgreSQL's JSON types refuse NUL and unpaired surrogates (JSON allows both)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    if not value.isascii() and _SURROGATE.search(value):
        raise ValueError("contains an unpaired surrogate (\\ud800-\\udfff), which is not valid Unicode text")


class PhotoMakerInput(GenerationOptions):
    """The input of ``fal-ai/photomaker``; the fields beyond fal's schema are marked as such."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"title": "PhotoMakerInput"})

    image_archive_url: str = Field(
        ..., max_length=64 * 1024 * 1024,
        description="A zip of photos of one person (a single photo works too). " + _URL_HELP,
    )
    initial_image_url: str | None = Field(
        None, max_length=64 * 1024 * 1024, description="Optional image to start from (image-to-image). " + _URL_HELP
    )
    image_urls: list[str] | None = Field(
        None, max_length=64, description="Beyond fal: photos as separate URLs instead of (or besides) the archive."
    )
    output_format: OutputFormat = Field("png", description="Beyond fal's schema: png, jpeg or webp.")
    sync_mode: bool = Field(
        False, description="Return images inline as data URIs in the result instead of storing them."
    )

    @field_validator("*", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, str):
                _check_text(item)
        return value

    @field_validator("image_archive_url", "initial_image_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("image_urls")
    @classmethod
    def _urls(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_check_url(v) for v in value]


def validation_context(settings: Settings) -> dict[str, Any]:
    """The deployment's rules for :class:`PhotoMakerInput` (the same at submit and in the worker)."""
    return {
        "trigger_word": settings.trigger_word,
        "max_num_images": settings.max_num_images,
        "max_pixels": settings.max_pixels_out,
        "default_version": settings.default_version,
        "enable_v2": settings.enable_v2,
    }


def parse_request(payload: Any, settings: Settings) -> PhotoMakerInput:
    """A request body (or a stored request) as the typed request; ``ValidationError`` when it breaks a rule."""
    return PhotoMakerInput.model_validate(payload, context=validation_context(settings))

"""The generation options: fal's ``fal-ai/photomaker`` input fields (names, types, defaults) minus the file inputs.

Torch-free on purpose: the API validates requests with the very same model that the engine runs on, so a request
accepted at submit is never rejected later for a rule the API did not know. Rules that depend on the deployment
(trigger word, maximum number of images) come from the pydantic validation *context*
(``model_validate(data, context={"trigger_word": ..., "max_num_images": ...})``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .styles import default_style, style_names

DEFAULT_TRIGGER_WORD = "img"
DEFAULT_MAX_NUM_IMAGES = 4
MAX_SEED = 2**63 - 1

BasePipeline = Literal["photomaker", "photomaker-style"]
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


class GenerationOptions(BaseModel):
    """Every non-file field of the request, validated."""

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


def resolve_size(image_size: ImageSize | str | None, initial_image_size: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) of the output.

    Without an explicit size, an initial image keeps its aspect ratio at about one megapixel (what SDXL was trained
    on), rounded to multiples of 8.
    """
    if isinstance(image_size, ImageSize):
        return image_size.width, image_size.height
    if isinstance(image_size, str):
        return IMAGE_SIZE_PRESETS[image_size]
    if initial_image_size is None:
        return DEFAULT_SIZE
    width, height = initial_image_size
    scale = math.sqrt(DEFAULT_SIZE[0] * DEFAULT_SIZE[1] / (width * height))
    return max(64, round(width * scale / 8) * 8), max(64, round(height * scale / 8) * 8)


def start_merge_step(style_strength: int, num_inference_steps: int) -> int:
    """The last step index that runs on the text alone (the reference's formula, capped at 30)."""
    return min(int(style_strength / 100 * num_inference_steps), 30)


def error_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Each problem as ``{loc, msg, type}`` with pydantic's "Value error, " prefix removed and without the input
    (which can be a 30 MB data URI): the shape of fal's 422 ``detail`` entries, minus the ``body`` prefix."""
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        details.append({"loc": list(error["loc"]), "msg": message, "type": error["type"]})
    return details

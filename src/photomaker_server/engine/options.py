"""How the engine applies a request's options: the output size, and when the ID joins the denoising."""

from __future__ import annotations

import math

from ..contract.request import DEFAULT_SIZE, IMAGE_SIZE_PRESETS, ImageSize


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

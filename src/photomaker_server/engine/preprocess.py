"""CLIP preprocessing of the ID photos.

The whole photo is used (no face crop): shortest side to the tower's input size (bicubic), centre crop, OpenAI CLIP
mean/std. The PIL implementation is pinned on purpose: transformers' default CLIP processor switches to a
torchvision path when torchvision is installed, which gives slightly different pixels, and the image must not depend
on what else happens to be installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers.models.clip import CLIPImageProcessorPil


class IDImageProcessor:
    def __init__(self, size: int = 224) -> None:
        self._processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, 3, size, size) float32 pixel values."""
        return self._processor([image.convert("RGB") for image in images], return_tensors="pt").pixel_values

"""Test helpers: synthetic photos (tests make their own images; nothing outside the repo is needed)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def make_face(seed: int, size: tuple[int, int] = (256, 320)) -> Image.Image:
    """A synthetic 'portrait': skin-toned ellipse, eyes, mouth on a random background; distinct per seed."""
    rng = np.random.default_rng(seed)
    bg = tuple(int(c) for c in rng.integers(0, 255, 3))
    image = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(image)
    w, h = size
    skin = tuple(int(c) for c in rng.integers(120, 240, 3))
    draw.ellipse([w * 0.2, h * 0.15, w * 0.8, h * 0.85], fill=skin)
    for ex in (0.38, 0.62):
        draw.ellipse([w * ex - 8, h * 0.4 - 5, w * ex + 8, h * 0.4 + 5], fill=(30, 30, 30))
    draw.arc([w * 0.38, h * 0.55, w * 0.62, h * 0.7], 0, 180, fill=(150, 40, 40), width=4)
    return image


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()

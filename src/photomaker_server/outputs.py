"""Encoding generated images for delivery (files, URLs, data URIs).

Images made by the random-weight demo model carry that fact inside the file (PNG text chunk / EXIF description),
so a picture that travels on without its JSON still says where it came from.
"""

from __future__ import annotations

import io

from PIL import Image, PngImagePlugin

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def encode_image(image: Image.Image, output_format: str = "png", description: str | None = None) -> tuple[bytes, str]:
    """(file bytes, content type)."""
    buf = io.BytesIO()
    if output_format == "png":
        info = PngImagePlugin.PngInfo()
        if description:
            info.add_text("Description", description)
        image.save(buf, format="PNG", pnginfo=info)
    elif output_format in ("jpeg", "webp"):
        exif = Image.Exif()
        if description:
            exif[0x010E] = description  # ImageDescription
        image.convert("RGB").save(buf, format=output_format.upper(), quality=95, exif=exif.tobytes())
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buf.getvalue(), CONTENT_TYPES[output_format]

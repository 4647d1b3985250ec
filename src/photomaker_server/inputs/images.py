"""Decoding user-supplied image bytes into an upright RGB ``PIL.Image`` under a pixel budget.

Image decoders are the largest attack surface of the service, so only an allow-list of formats is handed to
Pillow, and the dimensions are checked from the header before a single pixel is decoded (a 100000x100000
PNG is a few hundred bytes but would need 30 GB of memory).

ID photos need far fewer pixels than cameras take (the ID encoder sees 224x224), so a caller can ask for a photo
no larger than ``fit_pixels``: JPEGs are then decoded at a reduced scale by libjpeg itself (``draft``), other
formats are decoded and scaled down at once, so only the small copy is ever kept.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

from photomaker_server.inputs.errors import InputError

if TYPE_CHECKING:
    from photomaker_server.settings import Settings

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")
_FORMAT_NAMES = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP", "TIFF": "TIFF"}


@dataclass
class ImageLimits:
    """What :func:`decode_image` accepts. MPO is the multi-picture JPEG some phone cameras write."""

    max_pixels: int = 40_000_000
    formats: tuple[str, ...] = DEFAULT_FORMATS

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(max_pixels=settings.max_image_pixels)


def sniff_image_format(data: bytes) -> str | None:
    """The image format the magic bytes announce (a Pillow format name), or None.

    Used to tell photos from other files in archives without decoding them; the real check is the decoder.
    """
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _accepted(limits: ImageLimits) -> str:
    names = [_FORMAT_NAMES[f] for f in limits.formats if f in _FORMAT_NAMES]
    return ", ".join(names)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:g} megapixels"


#: Called with the number of pixels a decode is about to produce, before it does (a request's pixel budget).
PixelReservation = Callable[[int], None]


def decode_image(
    data: bytes,
    limits: ImageLimits,
    what: str = "image",
    *,
    fit_pixels: int | None = None,
    reserve: PixelReservation | None = None,
) -> Image.Image:
    """Decode ``data`` into a fully loaded RGB image with EXIF orientation applied.

    ``what`` names the input in messages: a noun ("initial image" reads "the initial image ...") or a file
    name ("photos/a.jpg", quoted as is). Animated images give their first frame. Transparency is composited
    onto white, as the model expects opaque photos.

    ``fit_pixels``: scale images with more pixels down to about that many (aspect kept), during the decode where
    the format allows it (JPEG). ``reserve`` is told how many pixels the decoder will produce before it starts,
    and may refuse by raising :class:`InputError`.
    """
    what = _subject(what)
    if not data:
        raise InputError(f"{what} is empty")
    formats = _open_formats(limits.formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(what, None, limits) from None
    except UnidentifiedImageError:
        raise InputError(f"{what} is not in a supported image format (accepted: {_accepted(limits)})") from None
    except Exception:  # noqa: BLE001 - any header parsing failure of untrusted bytes is the user's input
        raise InputError(f"{what} could not be read; it looks corrupt") from None

    try:
        if (image.format or "").upper() not in limits.formats:
            raise InputError(f"{what} is a {image.format} image; accepted formats: {_accepted(limits)}")
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InputError(f"{what} has no pixels ({width}x{height})")
        if width * height > limits.max_pixels:
            raise _too_large(what, (width, height), limits)
        target = _fitted_size((width, height), fit_pixels)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.seek(0)
                if target is not None:
                    image.draft(None, target)  # JPEG: libjpeg decodes at 1/2, 1/4 or 1/8 scale; others: no-op
                if reserve is not None:
                    reserve(image.size[0] * image.size[1])
                image.load()
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_large(what, (width, height), limits) from None
        except Exception:  # noqa: BLE001 - truncated/corrupt data surfaces as many exception types
            raise InputError(f"{what} could not be decoded; the file is truncated or corrupt") from None
        shrunk = _shrink(image, target, what) if target is not None else image
        upright = _exif_upright(shrunk)
        return _to_rgb(upright, what)
    finally:
        image.close()


def _fitted_size(size: tuple[int, int], fit_pixels: int | None) -> tuple[int, int] | None:
    """The size (aspect kept) of about ``fit_pixels`` pixels that ``size`` scales down to; None if it fits."""
    width, height = size
    if not fit_pixels or width * height <= fit_pixels:
        return None
    scale = math.sqrt(fit_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


#: Modes that Pillow can only resize by nearest neighbour (palette, 1-bit) or not at all (16-bit variants).
_RESIZE_AS_RGB = ("1", "P", "PA")


def _shrink(image: Image.Image, target: tuple[int, int], what: str) -> Image.Image:
    """``image`` (loaded) scaled down to fit ``target``, the EXIF data kept for the orientation that follows.

    ``thumbnail`` first reduces by an integer factor (cheap box filter) and finishes with a bicubic resample,
    and works in place: the full-size pixels are freed as soon as the small copy exists.
    """
    if image.mode in _RESIZE_AS_RGB or image.mode.startswith("I;16"):
        exif = image.getexif()
        image = _to_rgb(image, what)
        if exif:
            image.info["exif"] = exif.tobytes()
    image.thumbnail(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
    return image


def _subject(what: str) -> str:
    """How messages name the input: "the image", or a quoted file name like 'photos/a.jpg'."""
    return f"'{what}'" if ("/" in what or "." in what) else f"the {what}"


def _open_formats(formats: tuple[str, ...]) -> list[str]:
    """Pillow plugin names to try: MPO has no opener of its own (the JPEG plugin returns MPO images)."""
    Image.init()
    wanted = {f.upper() for f in formats}
    if "MPO" in wanted:
        wanted.add("JPEG")
    return sorted(f for f in wanted if f in Image.OPEN)


def _too_large(what: str, size: tuple[int, int] | None, limits: ImageLimits) -> InputError:
    dims = f" ({size[0]}x{size[1]} pixels)" if size else ""
    return InputError(f"{what} is too large{dims}; at most {_megapixels(limits.max_pixels)} are accepted")


def _exif_upright(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation says; a broken EXIF block is ignored rather than refused."""
    try:
        transposed = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF is common and harmless to ignore
        return image.copy()
    return transposed if transposed is not None else image.copy()


def _to_rgb(image: Image.Image, what: str) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha onto white, high-bit-depth scaled (not clipped) to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    try:
        if mode in ("I", "F") or mode.startswith("I;16"):
            return _scale_to_8bit(image).convert("RGB")
        has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
        if has_alpha:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError):
        raise InputError(f"{what} uses an unsupported colour mode ({mode})") from None


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """Map 16-bit / 32-bit integer and float greyscale to 8-bit "L" by range, so bright images stay visible."""
    source = image.convert("F")
    low, high = source.getextrema()
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        scale = 255.0  # float images normalised to 0..1
    elif high <= 255:
        scale = 1.0
    elif high <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / high
    return source.point(lambda value: value * scale).convert("L")

"""decode_image: format allow-list, pixel cap before decoding, EXIF orientation, conversion to RGB."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from photomaker_server.inputs.errors import InputError
from photomaker_server.inputs.images import ImageLimits, decode_image, sniff_image_format
from photomaker_server.settings import Settings

LIMITS = ImageLimits()


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming ``width`` x ``height`` and no pixel data: a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_each_accepted_format_decodes_to_rgb(fmt: str) -> None:
    data = encode(Image.new("RGB", (64, 48), (200, 30, 30)), fmt)
    assert sniff_image_format(data) == fmt
    image = decode_image(data, LIMITS)
    assert image.mode == "RGB"
    assert image.size == (64, 48)
    assert close(image.getpixel((10, 10)), (200, 30, 30), tolerance=40)  # GIF/WebP/JPEG are lossy-ish


def test_mpo_decodes_first_picture() -> None:
    first = Image.new("RGB", (16, 16), (255, 0, 0))
    data = encode(first, "MPO", save_all=True, append_images=[Image.new("RGB", (16, 16), (0, 0, 255))])
    image = decode_image(data, LIMITS)
    assert image.mode == "RGB" and image.size == (16, 16)
    assert close(image.getpixel((8, 8)), (255, 0, 0), tolerance=30)


def test_one_by_one_pixel() -> None:
    image = decode_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), LIMITS)
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (1, 2, 3)


def test_exif_orientation_6_rotates_clockwise() -> None:
    # Stored 40x20: left half red, right half blue. Orientation 6 = display rotated 90 degrees clockwise,
    # so the displayed image is 20x40 with the (stored) left half on top.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    image = decode_image(data, LIMITS)
    assert image.size == (20, 40)
    assert close(image.getpixel((10, 5)), (255, 0, 0), tolerance=30)
    assert close(image.getpixel((10, 35)), (0, 0, 255), tolerance=30)


def test_broken_exif_is_ignored() -> None:
    data = encode(Image.new("RGB", (8, 8)), "JPEG", exif=b"Exif\x00\x00garbage-not-tiff")
    assert decode_image(data, LIMITS).size == (8, 8)


def test_truncated_png_is_refused() -> None:
    noisy = Image.effect_noise((128, 128), 64).convert("RGB")
    data = encode(noisy, "PNG")
    with pytest.raises(InputError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], LIMITS)


def test_truncated_jpeg_is_refused() -> None:
    data = encode(Image.effect_noise((128, 128), 64).convert("RGB"), "JPEG")
    with pytest.raises(InputError):
        decode_image(data[: len(data) // 2], LIMITS)


def test_huge_dimensions_are_refused_from_the_header() -> None:
    data = png_header_only(100_000, 100_000)
    assert len(data) < 100
    with pytest.raises(InputError, match="too large"):
        decode_image(data, LIMITS)


def test_pixel_cap_below_pillows_own_bomb_limit() -> None:
    # 50 megapixels: under Pillow's default bomb threshold (89 MP), over our 40 MP default.
    with pytest.raises(InputError, match=r"too large \(10000x5000 pixels\).*40 megapixels"):
        decode_image(png_header_only(10_000, 5_000), LIMITS)


def test_custom_pixel_cap() -> None:
    data = encode(Image.new("RGB", (20, 20)), "PNG")
    with pytest.raises(InputError, match="too large"):
        decode_image(data, ImageLimits(max_pixels=399))
    assert decode_image(data, ImageLimits(max_pixels=400)).size == (20, 20)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode(Image.new("RGB", (16, 16)), "ICO"), id="ico"),
        pytest.param(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", id="pdf"),
        pytest.param(b"hello, I am a text file\n" * 10, id="text"),
        pytest.param(encode(Image.new("RGB", (16, 16)), "PPM"), id="ppm"),
    ],
)
def test_unsupported_formats_are_refused(data: bytes) -> None:
    with pytest.raises(InputError, match="not in a supported image format.*JPEG, PNG"):
        decode_image(data, LIMITS)


def test_format_outside_the_configured_allow_list() -> None:
    data = encode(Image.new("RGB", (8, 8)), "BMP")
    with pytest.raises(InputError):
        decode_image(data, ImageLimits(formats=("PNG",)))


def test_empty_input_and_custom_name_in_message() -> None:
    with pytest.raises(InputError, match="the ID photo 3 is empty"):
        decode_image(b"", LIMITS, what="ID photo 3")


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (0, 0, 255, 255))
    decoded = decode_image(encode(image, "PNG"), LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((1, 1)) == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == (0, 0, 255)


def test_la_is_composited_on_white() -> None:
    image = Image.new("LA", (4, 4), (0, 0))
    image.putpixel((0, 0), (0, 255))
    decoded = decode_image(encode(image, "PNG"), LIMITS)
    assert decoded.getpixel((1, 1)) == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == (0, 0, 0)


def test_palette_with_transparency() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    decoded = decode_image(encode(image, "PNG", transparency=0), LIMITS)
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 1)) == (0, 255, 0)


def test_palette_gif_animated_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = decode_image(data, LIMITS)
    assert decoded.mode == "RGB"
    assert close(decoded.getpixel((4, 4)), (255, 0, 0))


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(fmt: str) -> None:
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), fmt)  # red in CMYK
    decoded = decode_image(data, LIMITS)
    assert decoded.mode == "RGB"
    assert close(decoded.getpixel((4, 4)), (255, 0, 0), tolerance=30)


def test_greyscale_and_bilevel() -> None:
    assert decode_image(encode(Image.new("L", (4, 4), 128), "PNG"), LIMITS).getpixel((0, 0)) == (128,) * 3
    assert decode_image(encode(Image.new("1", (4, 4), 1), "PNG"), LIMITS).getpixel((0, 0)) == (255,) * 3


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    image = Image.new("I;16", (4, 4), 32768)  # mid grey in 16 bits
    image.putpixel((0, 0), 65535)
    decoded = decode_image(encode(image, "PNG"), LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert close(decoded.getpixel((1, 1)), (128, 128, 128), tolerance=2)


def test_float_tiff() -> None:
    image = Image.new("F", (4, 4), 0.5)
    decoded = decode_image(encode(image, "TIFF"), LIMITS)
    assert decoded.mode == "RGB"
    assert close(decoded.getpixel((0, 0)), (128, 128, 128), tolerance=2)


def test_limits_from_settings() -> None:
    limits = ImageLimits.from_settings(Settings(max_image_pixels=1234))
    assert limits.max_pixels == 1234
    assert "PNG" in limits.formats


def test_file_names_are_quoted_in_messages() -> None:
    with pytest.raises(InputError, match="^'photos/a.jpg' is not in a supported image format"):
        decode_image(b"plain text", LIMITS, what="photos/a.jpg")


# --- scaling down while decoding (ID photos) ----------------------------------------------------------------------


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_the_reservation_sees_that_size() -> None:
    data = encode(Image.new("RGB", (4000, 3000), (10, 120, 200)), "JPEG")
    reserved: list[int] = []
    image = decode_image(data, LIMITS, fit_pixels=300_000, reserve=reserved.append)
    assert reserved == [1000 * 750]  # libjpeg at 1/4 scale: the full 12 MP never existed
    assert image.width * image.height <= 300_000 and abs(image.width / image.height - 4 / 3) < 0.01
    assert close(image.getpixel((10, 10)), (10, 120, 200))


def test_other_formats_are_decoded_whole_then_scaled_down_keeping_mode_conversions_and_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    reserved: list[int] = []
    rotated = decode_image(encode(Image.new("RGB", (1200, 400), (0, 200, 0)), "PNG", exif=exif.tobytes()), LIMITS,
                           fit_pixels=30_000, reserve=reserved.append)
    assert reserved == [1200 * 400] and rotated.height > rotated.width and rotated.width * rotated.height <= 30_000
    palette = Image.new("P", (900, 900))
    palette.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    palette.paste(1, (0, 0, 900, 450))  # top half blue, bottom half red
    shrunk = decode_image(encode(palette, "PNG"), LIMITS, fit_pixels=10_000)
    assert shrunk.mode == "RGB" and shrunk.size == (100, 100)
    assert close(shrunk.getpixel((50, 10)), (0, 0, 255)) and close(shrunk.getpixel((50, 90)), (255, 0, 0))


def test_small_images_are_left_as_they_are_and_a_refused_reservation_decodes_nothing() -> None:
    data = encode(Image.new("RGB", (64, 48), (1, 2, 3)), "PNG")
    assert decode_image(data, LIMITS, fit_pixels=64 * 48).size == (64, 48)

    def refuse(pixels: int) -> None:
        raise InputError(f"no room for {pixels} pixels")

    with pytest.raises(InputError, match="no room for 3072 pixels"):
        decode_image(data, LIMITS, reserve=refuse)

"""extract_photos: zip handling, junk filtering, hostile archives, single-image input."""

from __future__ import annotations

import io
import os
import struct
import time
import zipfile

import pytest
from PIL import Image

from photomaker_server.inputs.archives import ArchiveLimits, extract_photos
from photomaker_server.inputs.errors import InputError
from photomaker_server.settings import Settings

LIMITS = ArchiveLimits()


def image_bytes(fmt: str = "PNG", color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, fmt)
    return buffer.getvalue()


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def names(contents) -> list[str]:
    return [name for name, _ in contents.photos]


def test_plain_zip_returns_photos_sorted_by_path() -> None:
    data = make_zip([("b.jpg", JPEG), ("a.png", PNG), ("c.webp", image_bytes("WEBP"))])
    contents = extract_photos(data, LIMITS)
    assert names(contents) == ["a.png", "b.jpg", "c.webp"]
    assert dict(contents.photos)["a.png"] == PNG
    assert contents.skipped == []


def test_nested_directories_and_directory_entries() -> None:
    data = make_zip([("me/", b""), ("me/2019/x.png", PNG), ("me/a.jpg", JPEG), ("z.png", PNG)])
    assert names(extract_photos(data, LIMITS)) == ["me/2019/x.png", "me/a.jpg", "z.png"]


def test_macosx_and_hidden_files_are_ignored_silently() -> None:
    data = make_zip(
        [
            ("__MACOSX/._a.png", b"\x00\x05\x16\x07 resource fork"),
            ("__MACOSX/photos/a.png", PNG),
            (".DS_Store", b"Bud1"),
            ("photos/._a.png", PNG),
            (".hidden/b.png", PNG),
            ("photos/a.png", PNG),
        ]
    )
    contents = extract_photos(data, LIMITS)
    assert names(contents) == ["photos/a.png"]
    assert contents.skipped == []


def test_non_images_are_skipped_by_content_not_extension() -> None:
    data = make_zip([("notes.txt", b"hello"), ("fake.jpg", b"not really a jpeg"), ("real.txt", PNG)])
    contents = extract_photos(data, LIMITS)
    assert names(contents) == ["real.txt"]
    assert contents.skipped == ["skipped fake.jpg: not an image", "skipped notes.txt: not an image"]


def test_only_non_images_is_refused_with_what_was_found() -> None:
    data = make_zip([("notes.txt", b"hello"), ("readme.md", b"# hi")])
    with pytest.raises(InputError, match=r"no usable photos \(notes.txt: not an image, readme.md: not an image\)"):
        extract_photos(data, LIMITS)


def test_only_junk_is_refused() -> None:
    with pytest.raises(InputError, match=r"no usable photos \(found: no files\)"):
        extract_photos(make_zip([("__MACOSX/._a.png", PNG), ("dir/", b"")]), LIMITS)


def test_empty_zip_is_refused() -> None:
    with pytest.raises(InputError, match="empty"):
        extract_photos(make_zip([]), LIMITS)


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(InputError, match="empty"):
        extract_photos(b"", LIMITS)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_zip_is_refused(fraction: float) -> None:
    data = make_zip([("a.png", PNG), ("b.png", image_bytes(color=(1, 2, 3)))])
    with pytest.raises(InputError, match="corrupt or truncated"):
        extract_photos(data[: int(len(data) * fraction)], LIMITS)


def test_corrupted_compressed_data_is_refused() -> None:
    noisy = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(noisy, "BMP")  # BMP compresses: deflate stream
    data = bytearray(make_zip([("a.bmp", noisy.getvalue())]))
    middle = len(data) // 2
    data[middle : middle + 16] = b"\xff" * 16
    with pytest.raises(InputError, match="corrupt"):
        extract_photos(bytes(data), LIMITS)


def test_random_bytes_are_neither_zip_nor_image() -> None:
    with pytest.raises(InputError, match="neither a zip archive nor an image"):
        extract_photos(os.urandom(4096), LIMITS)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_single_image_input(fmt: str) -> None:
    data = image_bytes(fmt)
    contents = extract_photos(data, LIMITS)
    assert contents.photos == [("image", data)]
    assert contents.skipped == []


def _bomb(size: int, prefix: bytes = PNG[:16]) -> bytes:
    """A zip entry of ``size`` bytes (an image signature, then zeros), written in chunks to stay cheap."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("bomb.png")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as entry:
            entry.write(prefix)
            zeros = bytes(1024 * 1024)
            for _ in range(size // len(zeros)):
                entry.write(zeros)
    return buffer.getvalue()


def test_zip_bomb_is_stopped_early() -> None:
    data = _bomb(200 * 1024 * 1024)
    assert len(data) < 1024 * 1024
    started = time.monotonic()
    with pytest.raises(InputError, match="zip bomb"):
        extract_photos(data, LIMITS)
    assert time.monotonic() - started < 2.0  # stopped after a few MB, not after 200


def test_entry_size_cap_counts_real_bytes() -> None:
    data = _bomb(3 * 1024 * 1024)
    limits = ArchiveLimits(max_entry_bytes=2 * 1024 * 1024, max_ratio=1e9)
    with pytest.raises(InputError, match="larger than 2 MB"):
        extract_photos(data, limits)


@pytest.mark.parametrize("claimed", [100, 2**31])
def test_lying_header_sizes_do_not_help(claimed: int) -> None:
    """Header sizes are patched to lie; the archive is still refused because real bytes are what count."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.png", PNG[:16] + bytes(3 * 1024 * 1024))
        offset = archive.getinfo("big.png").header_offset
    raw = bytearray(buffer.getvalue())
    central = raw.index(b"PK\x01\x02")
    raw[offset + 22 : offset + 26] = struct.pack("<I", claimed)  # local header: uncompressed size
    raw[central + 24 : central + 28] = struct.pack("<I", claimed)  # central directory: uncompressed size
    assert zipfile.ZipFile(io.BytesIO(bytes(raw))).getinfo("big.png").file_size == claimed
    limits = ArchiveLimits(max_entry_bytes=1024 * 1024, max_ratio=1e9)
    with pytest.raises(InputError, match="larger than 1 MB|corrupt"):
        extract_photos(bytes(raw), limits)


def test_total_size_cap() -> None:
    big = os.urandom(600 * 1024)  # incompressible, so the ratio check stays quiet
    entries = [(f"{i}.png", PNG[:16] + big) for i in range(4)]
    limits = ArchiveLimits(max_total_bytes=2 * 1024 * 1024)
    with pytest.raises(InputError, match="unpacks to more than 2 MB"):
        extract_photos(make_zip(entries), limits)


def test_too_many_entries() -> None:
    data = make_zip([(f"{i}.png", PNG) for i in range(6)])
    with pytest.raises(InputError, match="6 entries; at most 5"):
        extract_photos(data, ArchiveLimits(max_entries=5))


def test_more_photos_than_max_keeps_the_first_in_sorted_order() -> None:
    data = make_zip([(f"{i:02d}.png", PNG) for i in reversed(range(5))])
    contents = extract_photos(data, ArchiveLimits(max_photos=3))
    assert names(contents) == ["00.png", "01.png", "02.png"]
    assert len(contents.skipped) == 1
    assert "03.png, 04.png" in contents.skipped[0] and "first 3 photos" in contents.skipped[0]


def _with_encrypted_flag(name: str, data: bytes) -> bytes:
    """A zip whose entry ``name`` is marked encrypted (flag bit 0) in both local and central headers.

    zipfile resets flag_bits when writing, so the bit is set afterwards: in the central directory through the
    ZipInfo (written on close) and in the local header by patching its bytes.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
        archive.writestr("ok.png", PNG)
        info = archive.getinfo(name)
        info.flag_bits |= 0x1
        offset = info.header_offset
    raw = bytearray(buffer.getvalue())
    assert raw[offset : offset + 4] == b"PK\x03\x04"
    raw[offset + 6] |= 0x1
    return bytes(raw)


def test_encrypted_entry_is_skipped() -> None:
    data = _with_encrypted_flag("secret.png", PNG)
    assert zipfile.ZipFile(io.BytesIO(data)).getinfo("secret.png").flag_bits & 0x1
    contents = extract_photos(data, LIMITS)
    assert names(contents) == ["ok.png"]
    assert contents.skipped == ["skipped secret.png: encrypted (password-protected files are not supported)"]


def test_symlink_entry_is_skipped() -> None:
    info = zipfile.ZipInfo("link.png")
    info.create_system = 3  # unix
    info.external_attr = 0o120777 << 16
    data = make_zip([(info, b"/etc/passwd"), ("ok.png", PNG)])
    contents = extract_photos(data, LIMITS)
    assert names(contents) == ["ok.png"]
    assert contents.skipped == ["skipped link.png: a symbolic link"]


def test_nested_archives_are_skipped_by_name_and_by_magic() -> None:
    inner = make_zip([("inner.png", PNG)])
    data = make_zip([("inner.zip", inner), ("disguised.bin", inner), ("x.tar.gz", b"\x1f\x8b\x08"), ("ok.png", PNG)])
    contents = extract_photos(data, LIMITS)
    assert names(contents) == ["ok.png"]
    assert sorted(line.split(":")[0] for line in contents.skipped) == [
        "skipped disguised.bin",
        "skipped inner.zip",
        "skipped x.tar.gz",
    ]
    assert all("nested archive" in line for line in contents.skipped)


def test_stored_entries_and_zip_with_prefix() -> None:
    buffer = io.BytesIO()
    buffer.write(b"#!/bin/sh\necho self-extracting\n")
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.png", PNG)
    contents = extract_photos(buffer.getvalue(), LIMITS)
    assert names(contents) == ["a.png"]


def test_limits_from_settings() -> None:
    limits = ArchiveLimits.from_settings(Settings(max_archive_entries=7, max_id_photos=3, max_archive_ratio=9))
    assert (limits.max_entries, limits.max_photos, limits.max_ratio) == (7, 3, 9.0)

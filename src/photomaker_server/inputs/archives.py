"""Extracting ID photos from a user-supplied zip archive (or accepting a single image in its place).

Zip archives are hostile input: headers can lie about sizes, a few KB can inflate to gigabytes, entries can be
symlinks, encrypted or archives themselves. Nothing here trusts a header: every byte counted against a limit
is a byte actually decompressed, read in chunks so a bomb is stopped as soon as it crosses a limit.
Nothing is ever written to disk, so path tricks (``../``) only matter as names.
"""

from __future__ import annotations

import io
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from photomaker_server.inputs.errors import InputError
from photomaker_server.inputs.images import sniff_image_format

if TYPE_CHECKING:
    from photomaker_server.settings import Settings

MiB = 1024 * 1024
_CHUNK = 64 * 1024
#: Below this many decompressed bytes the ratio check stays quiet: small files (text, tiny images) compress
#: far better than photos without being a danger.
_RATIO_FLOOR = 1 * MiB
_NESTED_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".7z", ".rar", ".bz2", ".xz", ".zst", ".lz", ".lzma", ".cab")
_ARCHIVE_MAGIC = (
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\x1f\x8b",  # gzip
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"\x28\xb5\x2f\xfd",  # zstd
)
_MAX_NAMES_IN_MESSAGE = 8
_NESTED = "a nested archive (archives inside the archive are not opened)"


@dataclass
class ArchiveLimits:
    """Bounds on what one archive may cost to unpack; ``max_photos`` is how many ID photos are used."""

    max_entries: int = 200
    max_entry_bytes: int = 32 * MiB
    max_total_bytes: int = 256 * MiB
    max_ratio: float = 200.0
    max_photos: int = 16

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(
            max_entries=settings.max_archive_entries,
            max_entry_bytes=settings.max_archive_entry_bytes,
            max_total_bytes=settings.max_archive_total_bytes,
            max_ratio=settings.max_archive_ratio,
            max_photos=settings.max_id_photos,
        )


@dataclass
class ArchiveContents:
    """Photos as ``(entry path, bytes)`` sorted by path, and human-readable lines about what was skipped."""

    photos: list[tuple[str, bytes]]
    skipped: list[str] = field(default_factory=list)


def _mb(n: int) -> str:
    return f"{n / MiB:.0f} MB" if n >= MiB else f"{n} bytes"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_IN_MESSAGE])
    return shown + (f", and {len(names) - _MAX_NAMES_IN_MESSAGE} more" if len(names) > _MAX_NAMES_IN_MESSAGE else "")


def is_zip(data: bytes) -> bool:
    """Whether ``data`` is (or ends in) a zip archive, by its signatures; says nothing about it being intact."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return True
    try:
        return zipfile.is_zipfile(io.BytesIO(data))  # zips with a prefix (self-extracting archives)
    except Exception:  # noqa: BLE001
        return False


def _is_archive(head: bytes) -> bool:
    return head.startswith(_ARCHIVE_MAGIC) or head[257:262] == b"ustar"


def _is_junk(path: str) -> bool:
    """macOS resource forks and hidden files (``.DS_Store``, ``._x.jpg``) are ignored without comment."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    return not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


#: Called with each chunk's size as an entry is decompressed: a request's running total, which may refuse.
ByteCounter = Callable[[int], None]


def extract_photos(data: bytes, limits: ArchiveLimits) -> ArchiveContents:
    """The photos in ``data``: a zip archive of images, or a single image (returned as one photo "image").

    At most ``limits.max_photos`` are read (the rest are named in ``skipped``). Raises InputError for anything
    that is neither, for corrupt archives, for archives over a limit and for archives without a single usable
    photo.
    """
    stream = PhotoStream(data, limits)
    photos: list[tuple[str, bytes]] = []
    for photo in stream:
        photos.append(photo)
        if len(photos) >= limits.max_photos:
            break
    skipped = list(stream.skipped)
    left_over = stream.unread()
    if left_over:
        skipped.append(
            f"skipped {len(left_over)} more file(s) ({_names(left_over)}): only the first "
            f"{limits.max_photos} photos (in name order) are used"
        )
    return ArchiveContents(photos=photos, skipped=skipped)


class PhotoStream:
    """The photos of one input, one at a time, in name order: ``for name, data in PhotoStream(...)``.

    Only one entry is decompressed at a time and nothing is read ahead, so a reader that stops (enough photos)
    never pays for the rest, and one that keeps what it needs from each photo holds one entry's bytes at a
    time. ``count`` sees every decompressed chunk: a request's running total across all its inputs. Lines about
    what was skipped collect in ``skipped``; once the stream ends without a single usable photo, it raises
    InputError saying why.
    """

    def __init__(self, data: bytes, limits: ArchiveLimits, count: ByteCounter | None = None) -> None:
        if not data:
            raise InputError("the archive is empty (0 bytes); give a zip archive of photos or a single photo")
        self.skipped: list[str] = []
        self._data, self._limits, self._count = data, limits, count
        self._archive: zipfile.ZipFile | None = None
        self._entries: list[zipfile.ZipInfo] = []
        self._next = 0  # index into _entries of the first entry not yet looked at
        if sniff_image_format(data) is not None:
            return
        if not is_zip(data):
            raise InputError(
                "the file is neither a zip archive nor an image; give a .zip of photos (JPEG, PNG, WebP, ...) "
                "or a single photo"
            )
        try:
            self._archive = zipfile.ZipFile(io.BytesIO(data))
            entries = self._archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
            raise InputError("the zip archive is corrupt or truncated; it could not be opened") from None
        if not entries:
            raise InputError("the zip archive is empty; it should contain photos")
        if len(entries) > limits.max_entries:
            raise InputError(f"the zip archive has {len(entries)} entries; at most {limits.max_entries} are accepted")
        self._entries = sorted(
            (info for info in entries if not info.is_dir() and not _is_junk(info.filename)), key=lambda i: i.filename
        )

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        if self._archive is None:  # a single image
            if self._count is not None:
                self._count(len(self._data))
            yield "image", self._data
            return
        found = [info.filename for info in self._entries]
        yielded = False
        total = 0
        with self._archive:
            while self._next < len(self._entries):
                info = self._entries[self._next]
                self._next += 1
                reason = _refusal_by_header(info)
                if reason:
                    self.skipped.append(f"skipped {info.filename}: {reason}")
                    continue
                kind, content, used = _read_entry(self._archive, info, self._limits, total, len(self._data),
                                                  self._count)
                total += used
                if kind == "archive":
                    self.skipped.append(f"skipped {info.filename}: {_NESTED}")
                elif kind == "other":
                    self.skipped.append(f"skipped {info.filename}: not an image")
                else:
                    yielded = True
                    yield info.filename, content
                    del content  # the reader has what it needs: do not hold it while the next one inflates
        if not yielded:
            if self.skipped:  # say why each file was refused (encrypted, not an image, nested archive ...)
                reasons = [line.removeprefix("skipped ") for line in self.skipped]
                raise InputError(f"the archive contains no usable photos ({_names(reasons)})")
            raise InputError(
                f"the archive contains no usable photos (found: {_names(found) if found else 'no files'})"
            )

    def unread(self) -> list[str]:
        """Names of the files not (yet) looked at: what a reader that stopped early leaves unread."""
        return [info.filename for info in self._entries[self._next :]]


#: Names the worker will most likely find to be photos: what :func:`declared_unpacked_bytes` counts.
_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo")


def declared_unpacked_bytes(data: bytes, limits: ArchiveLimits) -> int | None:
    """Bytes the worker will unpack from ``data`` by its headers alone: a single image's size, or the declared
    sizes of the archive's photos that it would read (photo names, the first ``max_photos`` in name order).

    Costs a parse of the zip's central directory, nothing is inflated: the cheap check at submit. Headers can lie,
    so the worker still counts real bytes. None when the headers cannot tell (not an image or zip, corrupt) or show
    the input breaking a per-archive limit: the worker then refuses it, with the exact reason.
    """
    if sniff_image_format(data) is not None:
        return len(data)
    if not is_zip(data):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return None
    if len(entries) > limits.max_entries:
        return None
    photos = sorted(
        (info for info in entries
         if not info.is_dir() and not _is_junk(info.filename) and _refusal_by_header(info) is None
         and info.filename.lower().endswith(_PHOTO_SUFFIXES)),
        key=lambda info: info.filename,
    )[: limits.max_photos]
    total = 0
    for info in photos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > limits.max_entry_bytes or (info.file_size > _RATIO_FLOOR and ratio > limits.max_ratio):
            return None
        total += info.file_size
    return total if total <= limits.max_total_bytes else None


def _refusal_by_header(info: zipfile.ZipInfo) -> str | None:
    """Reasons to skip an entry without reading it."""
    if info.flag_bits & 0x1:
        return "encrypted (password-protected files are not supported)"
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        return "a symbolic link"
    if info.filename.lower().endswith(_NESTED_SUFFIXES):
        return _NESTED
    return None


def _read_entry(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    limits: ArchiveLimits,
    total_before: int,
    archive_size: int,
    count: ByteCounter | None = None,
) -> tuple[str, bytes, int]:
    """Decompress one entry under the limits: (kind, content, bytes decompressed).

    ``kind`` is "image", "archive" or "other", judged by the magic bytes of the first chunk; for the latter
    two nothing more is read, so a large text file or archive costs nothing. Header sizes are ignored: the
    counts are of bytes actually produced.
    """
    name = info.filename
    compressed = max(info.compress_size, 1)
    buffer = bytearray()
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(_CHUNK):
                first = not buffer
                if count is not None:
                    count(len(chunk))  # the request's total first: it may refuse before the chunk is kept
                buffer += chunk
                if first and sniff_image_format(bytes(buffer)) is None:
                    kind = "archive" if _is_archive(bytes(buffer[:512])) else "other"
                    return kind, b"", len(buffer)
                consumed = _compressed_consumed(stream, compressed)
                _check_limits(name, len(buffer), consumed, total_before + len(buffer), archive_size, limits)
    except InputError:
        raise
    except NotImplementedError:
        raise InputError(f"the zip entry {name} uses an unsupported compression method") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError):
        raise InputError(f"the zip archive is corrupt or truncated (entry {name} could not be read)") from None
    if not buffer:
        return "other", b"", 0
    return "image", bytes(buffer), len(buffer)


def _compressed_consumed(stream: object, compress_size: int) -> int:
    """Compressed bytes the entry's reader has consumed so far, so the ratio is checked as the bomb inflates.

    zipfile keeps this only in a private counter; without it we fall back to the entry's whole compressed
    size, which makes the ratio check fire later, but the absolute size caps still hold.
    """
    left = getattr(stream, "_compress_left", None)
    if isinstance(left, int) and 0 <= left <= compress_size:
        return max(compress_size - left, 1)
    return compress_size


def _check_limits(
    name: str, produced: int, compressed: int, total: int, archive_size: int, limits: ArchiveLimits
) -> None:
    if produced > limits.max_entry_bytes:
        raise InputError(
            f"the zip entry {name} is larger than {_mb(limits.max_entry_bytes)} when unpacked; "
            "photos that large are not accepted"
        )
    if total > limits.max_total_bytes:
        raise InputError(f"the zip archive unpacks to more than {_mb(limits.max_total_bytes)}; that is too much")
    if produced > _RATIO_FLOOR and produced / compressed > limits.max_ratio:
        raise InputError(
            f"the zip entry {name} compresses more than {limits.max_ratio:g}:1, which photos never do; "
            "the archive looks like a zip bomb"
        )
    if total > _RATIO_FLOOR and total / max(archive_size, 1) > limits.max_ratio:
        raise InputError(f"the zip archive expands more than {limits.max_ratio:g}:1; it looks like a zip bomb")

"""InputLoader: one request's inputs within one budget (bytes unpacked, decoded pixels held), each stored file and
each photo read once, reading stopped at ``max_id_photos``, large photos scaled down as they are decoded."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from PIL import Image

import photomaker_server
from helpers import image_bytes, make_face
from photomaker_server.contract.request import PhotoMakerInput
from photomaker_server.contract.stored import FILE_FIELDS, stored_request
from photomaker_server.inputs.budget import RequestBudget
from photomaker_server.inputs.errors import InputError
from photomaker_server.inputs.resolve import InputLoader
from photomaker_server.settings import Settings
from photomaker_server.storage import LocalStorage

MiB = 1024 * 1024
BASE = "http://127.0.0.1:8000"


class CountingStorage(LocalStorage):
    """Local storage that counts reads: what the loader fetched, and how often."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, BASE, secret=b"s" * 32)
        self.reads: list[str] = []

    def read(self, key: str) -> bytes | None:
        self.reads.append(key)
        return super().read(key)


@pytest.fixture
def storage(tmp_path: Path) -> CountingStorage:
    return CountingStorage(tmp_path / "files")


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _photos(*seeds: int) -> dict[str, bytes]:
    return {f"p{seed:02d}.png": image_bytes(make_face(seed, size=(40, 50))) for seed in seeds}


def _load(storage: CountingStorage, archive_url: str, budget: RequestBudget | None = None, **fields):  # noqa: ANN202
    settings = Settings(**{name: fields.pop(name) for name in list(fields) if name in Settings.model_fields})
    given = PhotoMakerInput(prompt="a photo of a man img", image_archive_url=archive_url, **fields)
    # as the API stores it: URLs of this storage become keys, read from storage by key
    request = stored_request(given, given.model_dump(include=set(FILE_FIELDS)), storage.key_from_url)
    lines: list[str] = []
    photos, initial = InputLoader(settings, storage).load_named(request, lambda m, *_: lines.append(m), budget)
    return photos, initial, lines


def test_query_variants_of_one_stored_file_are_read_once(storage):
    url = storage.put(_zip(_photos(1, 2)), "application/zip", "me.zip").url
    photos, _, lines = _load(storage, url, image_urls=[f"{url}?copy={i}" for i in range(6)] + [url + "#x"])
    assert [name for name, _ in photos] == ["p01.png", "p02.png"]
    assert len(storage.reads) == 1
    assert "Fetching the photos (1 file)" in lines
    assert any("7 repeated input(s)" in line for line in lines), lines


def test_a_photo_given_twice_is_used_once(storage):
    archive = storage.put(_zip(_photos(1, 2)), "application/zip", "me.zip").url
    again = storage.put(_photos(2)["p02.png"], "image/png", "again.png").url  # the zip's second photo, alone
    copy = storage.put(_zip(_photos(1, 2)), "application/zip", "copy.zip").url  # another file, the same bytes
    photos, _, lines = _load(storage, archive, image_urls=[again, copy])
    assert [name for name, _ in photos] == ["p01.png", "p02.png"]
    assert "Skipped 2 photo(s) or file(s) already given (the same bytes)" in lines


def test_reading_stops_once_max_id_photos_are_in_hand(storage):
    archive = storage.put(_zip(_photos(*range(5))), "application/zip", "five.zip").url
    later = storage.put(_zip(_photos(7)), "application/zip", "later.zip").url
    photos, _, lines = _load(storage, archive, max_id_photos=3, image_urls=[later])
    assert [name for name, _ in photos] == ["p00.png", "p01.png", "p02.png"]
    assert len(storage.reads) == 1  # the second input was never read
    assert any("2 more file(s) of this input and 1 more input(s) were not read" in line for line in lines), lines


def _padded_zip(seeds: range, pad: int) -> bytes:
    """Valid photos padded after their end (decoders stop at the end): ``pad`` bytes of each count as unpacked."""
    return _zip({name: data + bytes(pad) for name, data in _photos(*seeds).items()})


def test_unpacked_bytes_are_counted_across_the_inputs_of_a_request(storage):
    """Each archive is within every per-archive limit and within the request's budget alone; together they are not,
    and the refusal comes while the second one is being inflated."""
    first = storage.put(_padded_zip(range(0, 2), MiB), "application/zip", "a.zip").url
    second = storage.put(_padded_zip(range(2, 4), MiB), "application/zip", "b.zip").url
    budget = RequestBudget(max_bytes=3 * MiB, max_pixels=80_000_000)
    assert len(_load(storage, first, budget=RequestBudget(3 * MiB, 80_000_000))[0]) == 2
    over = "unpack to more than 3 MB in all .*, passed while reading image_urls;"
    with pytest.raises(InputError, match=over) as refused:
        _load(storage, first, budget=budget, image_urls=[second])
    assert refused.value.field == "image_urls"
    assert 3 * MiB < budget.bytes_read <= 3 * MiB + 64 * 1024  # stopped within one chunk of the budget


def test_the_initial_image_counts_towards_the_same_budget(storage):
    archive = storage.put(_padded_zip(range(2), MiB), "application/zip", "a.zip").url
    initial = storage.put(image_bytes(make_face(9, size=(64, 64))) + bytes(MiB), "image/png", "i.png").url
    assert len(_load(storage, archive, budget=RequestBudget(3 * MiB, 80_000_000))[0]) == 2  # the photos alone fit
    with pytest.raises(InputError, match="unpack to more than 3 MB") as refused:
        _load(storage, archive, budget=RequestBudget(3 * MiB, 80_000_000), initial_image_url=initial)
    assert refused.value.field == "initial_image_url"


def test_decoded_pixels_held_at_once_are_budgeted_before_decoding(storage):
    archive = storage.put(_zip(_photos(*range(4))), "application/zip", "four.zip").url  # 2000 pixels each
    budget = RequestBudget(max_bytes=MiB, max_pixels=5000)
    with pytest.raises(InputError, match="more than 0.005 megapixels .* while decoding image_archive_url") as refused:
        _load(storage, archive, budget=budget)
    assert refused.value.field == "image_archive_url"
    assert budget.pixels_held == 4000 and budget.peak_pixels == 4000  # the third photo was never decoded


def test_large_photos_are_kept_scaled_down_and_small_ones_untouched(storage):
    big = Image.new("RGB", (3000, 2000), (200, 100, 50))
    archive = storage.put(_zip({"big.jpg": image_bytes(big, "JPEG"), "big.png": image_bytes(big),
                                **_photos(1)}), "application/zip", "mixed.zip").url
    photos, _, _ = _load(storage, archive, id_photo_pixels=600_000)
    sizes = {name: image.size for name, image in photos}
    assert sizes["p01.png"] == (40, 50)
    for name in ("big.jpg", "big.png"):
        width, height = sizes[name]
        assert 500_000 < width * height <= 600_000 and abs(width / height - 1.5) < 0.01, sizes


def test_a_single_photo_is_named_by_where_it_came_from(storage):
    single = storage.put(image_bytes(make_face(3)), "image/png", "one.png").url
    other = storage.put(image_bytes(make_face(4)), "image/png", "two.png").url
    photos, _, _ = _load(storage, single, image_urls=[other])
    assert [name for name, _ in photos] == ["photo", "photo in image_urls[0]"]


# --- 16 photos of 40 megapixels, in a process of their own ------------------------------------------------------

_SIXTEEN_BIG = textwrap.dedent('''
    import io, json, os, struct, sys, zipfile, zlib
    from pathlib import Path
    from PIL import Image
    from photomaker_server.contract.files import FileRef
    from photomaker_server.contract.stored import StoredRequest
    from photomaker_server.inputs.budget import RequestBudget
    from photomaker_server.inputs.resolve import InputLoader
    from photomaker_server.settings import Settings
    from photomaker_server.storage import LocalStorage

    fmt, root = sys.argv[1], Path(sys.argv[2])
    image = Image.new("RGB", (7300, 5475), (180, 140, 120))  # 39.97 megapixels
    image.paste((30, 30, 30), (3000, 2000, 4300, 3500))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 90}))
    del image
    data = buffer.getvalue()

    def variant(i):  # the same pixels, other bytes: a comment (JPEG) or a text chunk (PNG) after the header
        if fmt == "JPEG":
            text = f"variant {i}".encode()
            return data[:2] + b"\\xff\\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
        body = b"Comment\\x00" + f"variant {i}".encode()
        chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
        return data[:33] + chunk + data[33:]

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for i in range(16):
            z.writestr(f"p{i:02d}.{fmt.lower()}", variant(i))
    storage = LocalStorage(root, "http://127.0.0.1:8000", secret=b"s" * 32)
    key = storage.put(archive.getvalue(), "application/zip", "big.zip").key
    del archive, buffer
    settings = Settings()
    budget = RequestBudget.from_settings(settings)
    request = StoredRequest(prompt="a photo of a man img", image_archive_url=FileRef.stored(key))
    status = Path("/proc/self/status")
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on is the load's
    before = int(status.read_text().split("VmRSS:")[1].split()[0])
    photos, _ = InputLoader(settings, storage).load_named(request, lambda *a: None, budget)
    peak = int(status.read_text().split("VmHWM:")[1].split()[0])
    print(json.dumps({"rise_kib": peak - before, "photos": len(photos), "peak_pixels": budget.peak_pixels,
                      "max_pixels": budget.max_pixels, "kept": [im.width * im.height for _, im in photos]}))
''')


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_sixteen_photos_of_40_megapixels_stay_within_the_pixel_budget(tmp_path, fmt):
    """A JPEG is decoded at a reduced scale; a PNG is decoded whole, one at a time, and scaled down at once. Held
    whole, the 16 photos were 16 x 120 MB."""
    src = str(Path(photomaker_server.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _SIXTEEN_BIG, fmt, str(tmp_path / "files")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(fmt, report)
    assert report["photos"] == 16
    assert all(pixels <= Settings().id_photo_pixels for pixels in report["kept"]), report["kept"]
    assert report["peak_pixels"] <= report["max_pixels"]
    assert report["rise_kib"] * 1024 < 512 * MiB, report

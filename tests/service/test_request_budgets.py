"""Per-request input budgets against the real server: the worker's own peak memory under a fan-out request.

The attack (issue 17): one ~5 MB zip uploaded through ``/storage/upload/multipart``, 16 entries of 15 MiB each that
start with JPEG magic bytes and compress ~45:1, within every per-archive limit, then submitted with ``image_urls``
holding 6 (or 64) copies of its URL that differ only in the query string. Unpacked per reference with the full
per-archive cap it used to raise the worker's peak memory by ~1.4 GiB (6 copies) to ~15 GiB (64 copies).

The worker's peak resident memory is measured from /proc: its high-water mark is reset just before the request
(``clear_refs``), so the rise is what this request cost, whatever earlier tests did.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from helpers import make_face
from service.svc import data_uri, messages, small, zip_bytes

MiB = 1024 * 1024
ENTRY_BYTES = 15 * MiB
BUDGET = 512 * MiB


class Upload(NamedTuple):
    url: str
    data: bytes


def _filler(seed: int, size: int) -> bytes:
    """``size`` bytes that deflate about 45:1: every 4 KiB block starts with 76 random bytes, the rest zeros."""
    count = -(-size // 4096)
    blocks = np.zeros((count, 4096), np.uint8)
    blocks[:, :76] = np.random.default_rng(seed).integers(0, 256, (count, 76), dtype=np.uint8)
    return blocks.tobytes()[:size]


def _small_jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    make_face(seed, size=(64, 80)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fan_out(api) -> dict[str, Upload]:
    """The two hostile uploads (storage URL and bytes): JPEG magic then filler (undecodable), and real small JPEGs
    padded after their end-of-image marker to 15 MiB (decoders ignore the padding: 16 valid photos of 15 MiB each)."""
    magic = zip_bytes({f"p{i:02d}.jpg": b"\xff\xd8\xff\xe0" + _filler(i, ENTRY_BYTES - 4) for i in range(16)})
    padded = {}
    for i in range(16):
        photo = _small_jpeg(i)
        padded[f"p{i:02d}.jpg"] = photo + _filler(100 + i, ENTRY_BYTES - len(photo))
    valid = zip_bytes(padded)
    uploads = {}
    for name, archive in (("magic", magic), ("padded", valid)):
        assert 4 * MiB < len(archive) < 7 * MiB and 35 < 16 * ENTRY_BYTES / len(archive) < 55, len(archive)
        response = api.http.post("/storage/upload/multipart",
                                 files={"file": (f"{name}.zip", archive, "application/zip")})
        assert response.status_code == 200, response.text
        uploads[name] = Upload(response.json()["url"], archive)
    return uploads


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS (Linux: ``5`` into clear_refs); returns that, in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmRSS") * 1024


def _worker_pid(live_server) -> int:  # noqa: ANN001
    pids = [pid for pid in live_server.worker_pids()  # not multiprocessing's resource tracker
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(pids) == 1, pids
    return pids[0]


def _submit_measured(api, live_server, url: str, copies: int) -> tuple[dict, int]:  # noqa: ANN001
    """Submit ``url`` as the archive plus ``copies`` query-string variants of it in ``image_urls``; the final status
    and how far the worker's peak RSS rose (bytes) while it ran."""
    return _submit_measured_urls(api, live_server, url, [f"{url}?copy={i}" for i in range(copies)])


def _submit_measured_urls(api, live_server, archive_url: str,  # noqa: ANN001
                          image_urls: list[str]) -> tuple[dict, int]:
    pid = _worker_pid(live_server)
    before = _reset_peak(pid)
    request_id = api.submit(small(archive_url, image_urls=image_urls))
    final = api.wait(request_id, timeout=180)
    rise = _status_kib(pid, "VmHWM") * 1024 - before
    print(f"{archive_url.rsplit('/', 1)[-1]} + {len(image_urls)}: worker peak RSS rose by {rise / MiB:.0f} MiB")
    return final, rise


@pytest.mark.parametrize("copies", [6, 64])
def test_the_fan_out_request_fails_cleanly_and_the_worker_stays_within_its_memory_budget(
        api, live_server, fan_out, copies):
    final, rise = _submit_measured(api, live_server, fan_out["magic"].url, copies)
    assert final.get("error_type") == "input_error", final
    assert "p00.jpg" in final["error"], final["error"]  # refused at the first photo; nothing more was inflated
    assert "Fetching the photos (1 file)" in messages(final)
    assert rise < BUDGET, f"the worker's peak RSS rose by {rise / MiB:.0f} MiB"


@pytest.mark.parametrize("copies", [6, 64])
def test_sixteen_valid_photos_of_15_mib_each_are_read_once_one_at_a_time(api, live_server, fan_out, copies):
    """The same upload shape with photos that decode: the request succeeds with the 16 photos, each read once."""
    final, rise = _submit_measured(api, live_server, fan_out["padded"].url, copies)
    assert final.get("error") is None, final
    assert "Encoding 16 ID photos" in messages(final)
    assert rise < BUDGET, f"the worker's peak RSS rose by {rise / MiB:.0f} MiB"


def test_data_uris_that_declare_more_than_the_request_budget_are_refused_at_submit(api, live_server, fan_out):
    """Two distinct fan-out archives as data URIs: 2 x 240 MiB by their headers, over the 320 MiB budget. The bytes
    are in hand at submit, so the refusal is a 422 naming the field, and nothing is stored or queued."""
    body = small(data_uri(fan_out["magic"].data, "application/zip"),
                 image_urls=[data_uri(fan_out["padded"].data, "application/zip")])
    files_before = sum(1 for _ in (live_server.data_dir / "files").rglob("*"))
    response = api.submit_response(body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "image_urls", 0] and detail[0]["type"] == "input_budget_exceeded", detail
    assert "unpack to more than 320 MB in all" in detail[0]["msg"]
    assert sum(1 for _ in (live_server.data_dir / "files").rglob("*")) == files_before


def test_distinct_uploads_past_the_unpack_budget_are_refused_at_submit(api, live_server):
    """Three different uploads holding the same 8 padded photos (15 MiB each, about 120 MiB by their headers): the
    sizes recorded when they were stored put the request past the 320 MiB budget at the third, so the submit is a
    422 naming that field and nothing is queued (``api/input_budget.py``). The worker's own count of the same shape,
    chunk by chunk as it inflates (for inputs whose headers nobody vouched for), is in tests/inputs/test_resolve.py."""
    entries = {}
    for i in range(8):
        photo = _small_jpeg(i)
        entries[f"p{i:02d}.jpg"] = photo + _filler(200 + i, ENTRY_BYTES - len(photo))
    urls = []
    for copy in range(3):  # another note in each: other archive bytes, the same photo bytes
        archive = zip_bytes({**entries, "note.txt": f"copy {copy}".encode()})
        response = api.http.post("/storage/upload/multipart", files={"file": ("same.zip", archive, "application/zip")})
        assert response.status_code == 200, response.text
        urls.append(response.json()["url"])
    response = api.submit_response(small(urls[0], image_urls=urls[1:]))
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "image_urls", 1] and detail["type"] == "input_budget_exceeded", detail
    assert "unpack to more than 320 MB in all" in detail["msg"]

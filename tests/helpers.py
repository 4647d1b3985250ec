"""Test helpers: synthetic photos (tests make their own images; nothing outside the repo is needed)."""

from __future__ import annotations

import base64
import io
import threading
import zipfile

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


def stored_request(prompt: str = "a photo of a person img", archive: str = "https://example.com/a.zip", **fields):  # noqa: ANN201
    """A request as the job store keeps it (``StoredRequest``), for tests of the store and what reads it."""
    from photomaker_server.contract.files import FileRef
    from photomaker_server.contract.stored import StoredRequest

    return StoredRequest(prompt=prompt, image_archive_url=FileRef.outside(archive), **fields)


def stored_output(*keys: str, seed: int = 1, prompt: str = "a photo of a person img", urls: tuple[str, ...] = ()):  # noqa: ANN201
    """A result as the worker stores it (``StoredOutput``): one PNG per storage key, then one per URL."""
    from photomaker_server.contract.files import FileRef
    from photomaker_server.contract.result import StoredImage, StoredOutput

    refs = [FileRef.stored(k) for k in keys] + [FileRef.outside(u) for u in urls]
    images = [StoredImage(file=ref, content_type="image/png", file_name=f"out-{i}.png", file_size=3, width=8,
                          height=8) for i, ref in enumerate(refs)]
    return StoredOutput(images=images, seed=seed, prompt=prompt)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def zip_bytes(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buf.getvalue()


class FlakyStore:
    """A real job store, unreachable while ``down`` is set (each call fails as a refused connection would)."""

    def __init__(self, store) -> None:  # noqa: ANN001
        self._store, self.health, self.down = store, store.health, threading.Event()

    def __getattr__(self, name: str):  # noqa: ANN204
        from photomaker_server.jobs.records import StoreUnavailable

        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if self.down.is_set():
                self.health.failed("connection refused (simulated)")
                raise StoreUnavailable("the database is unreachable: connection refused (simulated)")
            return attr(*args, **kwargs)

        return call

    def outage(self, seconds: float) -> None:
        """Down now, back after ``seconds`` (from another thread)."""
        self.down.set()
        threading.Timer(seconds, self.down.clear).start()

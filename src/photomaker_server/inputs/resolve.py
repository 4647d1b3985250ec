"""From a request's URLs to decoded photos: what the worker runs before the engine.

URLs of this service's own storage are read from disk (no HTTP round trip, and no SSRF exemption needed for our
own address); everything else goes through the SSRF-safe fetcher. Each step logs what a user would want to know.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from ..contract.request import PhotoMakerInput
from ..settings import Settings
from ..storage.base import FileStorage
from .archives import ArchiveLimits, extract_photos
from .errors import InputError
from .fetch import FetchPolicy, fetch_bytes
from .images import ImageLimits, decode_image

Log = Callable[..., None]


class InputLoader:
    def __init__(self, settings: Settings, storage: FileStorage) -> None:
        self.storage = storage
        self.policy = FetchPolicy.from_settings(settings, local_resolver=self._own_file)
        self.archive_limits = ArchiveLimits.from_settings(settings)
        self.image_limits = ImageLimits.from_settings(settings)

    def _own_file(self, url: str) -> bytes | None:
        key = self.storage.key_from_url(url)
        if key is None:
            return None
        data = self.storage.read(key)
        if data is None:
            raise InputError(f"{url} is not (or no longer) stored on this server")
        return data

    def _fetch(self, url: str, field: str) -> bytes:
        try:
            return fetch_bytes(url, self.policy).data
        except InputError as exc:
            if exc.field is None:
                exc.field = field
            raise

    def load(self, request: PhotoMakerInput, log: Log) -> tuple[list[Image.Image], Image.Image | None]:
        """(ID photos in order, initial image or None)."""
        named: list[tuple[str, bytes]] = []
        archive_url = request.image_archive_url
        extra_urls = [u for u in request.image_urls or [] if u != archive_url]
        log(f"Fetching the photos ({1 + len(extra_urls)} file{'s' if extra_urls else ''})")
        contents = extract_photos(self._fetch(archive_url, "image_archive_url"), self.archive_limits)
        for line in contents.skipped:
            log(line, "WARN")
        named += contents.photos
        for url in extra_urls:
            extra = extract_photos(self._fetch(url, "image_urls"), self.archive_limits)
            named += extra.photos
        if len(named) > self.archive_limits.max_photos:
            log(f"Using the first {self.archive_limits.max_photos} of {len(named)} photos", "WARN")
            named = named[: self.archive_limits.max_photos]
        photos = [decode_image(data, self.image_limits, what=name) for name, data in named]
        for photo, (name, _) in zip(photos, named):
            photo.info["name"] = name  # for messages about one photo (v2: "no face found in photo 2 of 3 (b.jpg)")
        initial = None
        if request.initial_image_url:
            log("Fetching the initial image")
            initial = decode_image(self._fetch(request.initial_image_url, "initial_image_url"), self.image_limits,
                                   what="initial image")
        return photos, initial

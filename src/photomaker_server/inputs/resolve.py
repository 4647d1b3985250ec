"""From a stored request's file references to decoded photos: what the worker runs before the engine.

Files of this service's own storage are named by key (:class:`~photomaker_server.contract.files.FileRef`, decided at
submit) and read straight from storage: no HTTP round trip, no SSRF exemption for our own address, and no URL to
recognise again. Everything else goes through the SSRF-safe fetcher. (A URL of our own storage can still reach the
fetcher in a request queued before migration 0006, which could not know the storage's address: the fetch policy's
local resolver reads those from storage too.) Each step logs what a user would want to know.

The request as a whole is bounded, not just each input (:class:`~.budget.RequestBudget`). Inputs are read one after
another and each photo is decoded as soon as its bytes are out of the archive, scaled down to what the engine
needs, and its bytes dropped: at any moment the worker holds one fetched input, one photo's bytes and the small
decoded photos. The same stored file named twice (``…?copy=1``, ``…?copy=2``: one key) is read once, a photo whose
bytes were seen before is skipped, and reading stops once ``max_id_photos`` photos are in hand.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from PIL import Image

from ..contract.files import FileRef
from ..contract.stored import StoredRequest
from ..settings import Settings
from ..storage.base import FileStorage
from .archives import ArchiveLimits, PhotoStream
from .budget import RequestBudget
from .errors import InputError
from .fetch import FetchPolicy, fetch_bytes
from .images import ImageLimits, decode_image

Log = Callable[..., None]
#: An ID photo and its name: the entry path in its archive, or which input a single photo came from.
NamedPhoto = tuple[str, Image.Image]


@contextlib.contextmanager
def _blamed_on(field: str) -> Iterator[None]:
    """Refusals inside the block name ``field`` (unless they already name one)."""
    try:
        yield
    except InputError as exc:
        if exc.field is None:
            exc.field = field
        raise


class InputLoader:
    def __init__(self, settings: Settings, storage: FileStorage) -> None:
        self.settings = settings
        self.storage = storage
        self.policy = FetchPolicy.from_settings(settings, local_resolver=self._own_file)
        self.archive_limits = ArchiveLimits.from_settings(settings)
        self.image_limits = ImageLimits.from_settings(settings)

    def _own_file(self, url: str) -> bytes | None:
        """The fetcher's local resolver: a URL of our own storage (only in requests queued before migration 0006)
        is read from storage, not fetched."""
        key = self.storage.key_from_url(url)
        return None if key is None else self._stored(key, url)

    def _stored(self, key: str, what: str) -> bytes:
        data = self.storage.read(key)
        if data is None:
            raise InputError(f"{what} is not (or no longer) stored on this server")
        return data

    def _fetch(self, ref: FileRef, field: str) -> bytes:
        with _blamed_on(field):
            if ref.key is not None:
                return self._stored(ref.key, f"The file given in {field}")
            return fetch_bytes(ref.url or "", self.policy).data

    def load(self, request: StoredRequest, log: Log) -> tuple[list[Image.Image], Image.Image | None]:
        """(ID photos in order, initial image or None)."""
        named, initial = self.load_named(request, log)
        return [image for _name, image in named], initial

    def load_named(
        self, request: StoredRequest, log: Log, budget: RequestBudget | None = None
    ) -> tuple[list[NamedPhoto], Image.Image | None]:
        """(ID photos with their names, in order; initial image or None), within the request's budgets.

        ``budget``: a fresh one from the settings unless given (a caller that wants to see what was spent).
        """
        budget = budget or RequestBudget.from_settings(self.settings)
        photos = self._photos(request, budget, log)
        initial = None
        if request.initial_image_url:
            log("Fetching the initial image")
            field = "initial_image_url"
            data = self._fetch(request.initial_image_url, field)
            with _blamed_on(field):
                budget.add_bytes(len(data), field)
                initial = decode_image(data, self.image_limits, what="initial image",
                                       reserve=budget.pixel_reservation(field))
            budget.hold_pixels(initial.width * initial.height)
        return photos, initial

    def _sources(self, request: StoredRequest) -> list[tuple[str, FileRef]]:
        """(field, reference) of every photo input in order, each distinct input once."""
        sources: list[tuple[str, FileRef]] = []
        seen: set[str] = set()
        for field, ref in request.photo_refs():
            identity = ref.identity()
            if identity not in seen:
                seen.add(identity)
                sources.append((field, ref))
        return sources

    def _photos(self, request: StoredRequest, budget: RequestBudget, log: Log) -> list[NamedPhoto]:
        sources = self._sources(request)
        log(f"Fetching the photos ({len(sources)} file{'s' if len(sources) != 1 else ''})")
        named_inputs = 1 + len(request.image_urls or [])
        if len(sources) < named_inputs:
            log(f"Reading {named_inputs - len(sources)} repeated input(s) once (the same file named again)")
        collected = _Collected(limit=self.archive_limits.max_photos)
        for index, (field, ref) in enumerate(sources):
            stream = self._read_input(request, field, ref, budget, collected)
            skipped, unread = (stream.skipped, len(stream.unread())) if stream is not None else ([], 0)
            del stream  # it holds the input's bytes: gone before the next input is fetched
            for line in skipped:
                log(line, "WARN")
            if collected.full:
                untouched = len(sources) - index - 1
                if unread or untouched:
                    log(f"Using the first {collected.limit} photos: {unread} more file(s) of this input and "
                        f"{untouched} more input(s) were not read", "WARN")
                break
        if collected.repeated:
            log(f"Skipped {collected.repeated} photo(s) or file(s) already given (the same bytes)", "WARN")
        return collected.photos

    def _read_input(
        self, request: StoredRequest, field: str, ref: FileRef, budget: RequestBudget, collected: _Collected
    ) -> PhotoStream | None:
        """Fetch one input and decode its new photos into ``collected`` until it is full; the stream that was read
        (for what it skipped and left unread), or None when the input's bytes were already read."""
        data = self._fetch(ref, field)
        if not collected.new_input(data):
            return None
        label = "photo" if field == "image_archive_url" else f"photo in image_urls[{self._position(request, ref)}]"
        with _blamed_on(field):
            stream = PhotoStream(data, self.archive_limits, count=budget.byte_counter(field))
            del data  # the stream holds it while it reads; nothing else needs it
            for name, photo in stream:
                if not collected.new_photo(photo):
                    continue
                name = label if name == "image" else name
                image = decode_image(photo, self.image_limits, what=name, fit_pixels=self.settings.id_photo_pixels,
                                     reserve=budget.pixel_reservation(field))
                del photo  # before the next entry is inflated
                budget.hold_pixels(image.width * image.height)
                collected.photos.append((name, image))
                if collected.full:
                    break
        return stream

    @staticmethod
    def _position(request: StoredRequest, ref: FileRef) -> int:
        return (request.image_urls or []).index(ref)


@dataclass
class _Collected:
    """The photos kept so far for one request, and the digests of the inputs and photos already read."""

    limit: int
    photos: list[NamedPhoto] = field(default_factory=list)
    repeated: int = 0
    _inputs: set[bytes] = field(default_factory=set)
    _photos: set[bytes] = field(default_factory=set)

    @property
    def full(self) -> bool:
        return len(self.photos) >= self.limit

    def new_input(self, data: bytes) -> bool:
        """Whether an input's bytes are new to the request (the same file at another URL is not)."""
        return self._first_time(data, self._inputs)

    def new_photo(self, data: bytes) -> bool:
        """Whether a photo's bytes are new to the request (in another archive, or given alone too)."""
        return self._first_time(data, self._photos)

    def _first_time(self, data: bytes, seen: set[bytes]) -> bool:
        digest = hashlib.sha256(data).digest()
        if digest in seen:
            self.repeated += 1
            return False
        seen.add(digest)
        return True

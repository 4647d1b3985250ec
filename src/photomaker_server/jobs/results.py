"""Which stored files a finished job's result names (what the housekeeper deletes with the job).

Rendering a result for clients is :func:`photomaker_server.contract.result.render_output`, the one renderer.
"""

from __future__ import annotations

from collections.abc import Callable

from ..contract.result import StoredOutput

__all__ = ["result_keys"]


def result_keys(result: StoredOutput | None, key_from_url: Callable[[str], str | None]) -> list[str]:
    """The storage keys a stored result names: its images' keys, and for results stored before keys existed (an
    image URL of our own storage, kept as a URL by migration 0006, which cannot know the storage's address) the key
    in that URL (``key_from_url``: the storage's URL recognition). Data URIs and foreign URLs name none."""
    if result is None:
        return []
    keys = []
    for image in result.images:
        ref = image.file
        key = ref.key if ref.key is not None else (None if ref.is_data_uri else key_from_url(ref.url or ""))
        if key:
            keys.append(key)
    return keys

"""Stored results and what clients see of them.

The worker stores each output image by its storage ``key`` (``{"key", "content_type", "file_name", ...}``); the
URL is rendered from the key whenever a result is handed out (result endpoint, webhooks), so it follows the
deployment's current public URL, CDN or presigning. ``sync_mode`` images keep their data URI in ``url``, and
results stored before keys existed hold only a ``url``: both are answered as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["UrlRenderer", "render_result", "result_keys"]

#: A storage key → the URL a client fetches it from (e.g. ``lambda key: storage.url_for(key, base_url)``).
UrlRenderer = Callable[[str], str]


def _images(result: dict[str, Any] | None) -> list[Any]:
    images = (result or {}).get("images") if isinstance(result, dict) else None
    return images if isinstance(images, list) else []


def render_result(result: dict[str, Any] | None, url_for: UrlRenderer | None) -> dict[str, Any] | None:
    """A copy of ``result`` in fal's shape: every image that has a ``key`` gets its ``url`` (the key itself is
    not shown). Without a renderer, keys are left as they are. The stored result is never modified."""
    if not isinstance(result, dict) or url_for is None or not _images(result):
        return result
    images = []
    for image in _images(result):
        if isinstance(image, dict) and isinstance(image.get("key"), str):
            shown = {k: v for k, v in image.items() if k != "key"}
            images.append({"url": url_for(image["key"]), **shown})
        else:
            images.append(image)
    return {**result, "images": images}


def result_keys(result: dict[str, Any] | None, key_from_url: Callable[[str], str | None]) -> list[str]:
    """The storage keys a stored result names: its images' ``key``, or for old results the key in their
    ``url`` (``key_from_url``: the storage's URL recognition). Data URIs and foreign URLs name none."""
    keys = []
    for image in _images(result):
        if not isinstance(image, dict):
            continue
        key = image.get("key")
        if not isinstance(key, str):
            url = image.get("url")
            key = key_from_url(url) if isinstance(url, str) else None
        if key:
            keys.append(key)
    return keys

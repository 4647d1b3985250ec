"""A request's unpack budget, checked at submit for its inputs already stored on this server.

An archive uploaded first (``/storage/upload/…``, a signed upload URL, ``/files/upload``) and then named by its URL
in the request was measured when it was stored: :class:`~.stored_files.QuotaStorage` records the bytes the worker
would unpack from it, by its headers, in the job database. So a submit can refuse a request whose stored inputs
together pass ``max_request_input_bytes`` with a 422 naming the field, reading no file — instead of queueing a job
that can only fail. Each stored file counts once however many URLs (query strings, host spellings) name it, as the
worker reads it once. What headers cannot vouch for (files stored before this was recorded, URLs elsewhere) is left
to the worker, which counts the real bytes as it inflates them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..inputs.budget import over_unpack_budget
from ..inputs.data_uri import is_data_uri
from ..jobs.protocol import JobStore
from .data_uris import DataUriRefused, UnpackBudget

__all__ = ["check_stored_inputs"]

#: The storage key of a URL of this service's storage, else None (``FileStorage.key_from_url``).
OwnKey = Callable[[str], str | None]


def _stored_inputs(payload: dict[str, Any], own_key: OwnKey) -> list[tuple[tuple[str | int, ...], str]]:
    """(field location, storage key) of each input stored here, in the order the worker reads them."""
    found: list[tuple[tuple[str | int, ...], str | None]] = [(("image_archive_url",), payload.get("image_archive_url"))]
    found += [(("image_urls", i), url) for i, url in enumerate(payload.get("image_urls") or [])]
    found.append((("initial_image_url",), payload.get("initial_image_url")))
    keyed = []
    for loc, url in found:
        if isinstance(url, str) and not is_data_uri(url[:64].lstrip()):  # a slice: never a copy of a data URI
            key = own_key(url)
            if key is not None:
                keyed.append((loc, key))
    return keyed


def check_stored_inputs(payload: dict[str, Any], own_key: OwnKey, store: JobStore,
                        budget: UnpackBudget) -> UnpackBudget:
    """``budget`` with what the request's stored inputs declare counted in (``already``), for its data URIs.
    ``own_key`` is never called with a data URI.

    Raises :class:`DataUriRefused` (the same 422 in fal's shape, type ``input_budget_exceeded``) at the input that
    takes the request past the budget."""
    keyed = _stored_inputs(payload, own_key)
    if not keyed:
        return budget
    declared = store.declared_unpacked([key for _, key in keyed])
    total, counted = budget.already, set()
    for loc, key in keyed:
        if key in counted:
            continue
        counted.add(key)
        total += declared.get(key) or 0
        if total > budget.max_bytes:
            raise DataUriRefused(loc, over_unpack_budget(budget.max_bytes, by_headers=True), "input_budget_exceeded")
    return replace(budget, already=total)

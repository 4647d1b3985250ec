"""What one key may hold at a time: stored bytes and files, open status streams, held ``/run`` calls.

Every check asks :class:`LimitsPolicy` — ``limits.for_owner(owner)`` — and nothing else, so where a key's limits come
from is decided in one place. Today that is :class:`DeploymentLimits`: the same per-key default for every key, from
the settings. Managed keys with limits of their own plug in as another ``LimitsPolicy`` (look the owner's key up,
fall back to the deployment default), chosen in ``deployment.py``.

Torch-free and dependency-free: the API, the job store and the CLI all import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from .jobs.keys import ApiKey
from .settings import Settings

__all__ = ["DeploymentLimits", "KeyLimits", "KeyedLimits", "LimitsPolicy", "QuotaExceeded", "StorageQuota",
           "StorageUsage", "UploadAlreadyCharged"]


@dataclass(frozen=True)
class StorageQuota:
    """Most bytes and files a key may have stored (unexpired) at once; None: no limit."""

    max_bytes: int | None
    max_files: int | None


@dataclass(frozen=True)
class StorageUsage:
    """What a key has stored now: unexpired files (pending signed uploads included) and their bytes."""

    owner: str
    files: int
    bytes: int


@dataclass(frozen=True)
class KeyLimits:
    """Everything one key is allowed at once. Connection caps are per API process (connections are)."""

    storage: StorageQuota
    #: Open ``…/status/stream`` responses (Server-Sent Events); None: no limit.
    max_streams: int | None
    #: ``/run`` calls held open while their request runs; None: no limit.
    max_held_runs: int | None


class LimitsPolicy(Protocol):
    def for_owner(self, owner: str) -> KeyLimits:
        """The limits of the key whose owner id is ``owner`` (``api.auth.owner_id``)."""
        ...


def _cap(value: int) -> int | None:
    return value if value > 0 else None


class DeploymentLimits:
    """One default for every key, from the settings (0 in a setting: no limit)."""

    def __init__(self, settings: Settings) -> None:
        self._limits = KeyLimits(
            storage=StorageQuota(_cap(settings.storage_quota_bytes), _cap(settings.storage_quota_files)),
            max_streams=_cap(settings.max_streams_per_key),
            max_held_runs=_cap(settings.max_held_runs_per_key),
        )

    def for_owner(self, owner: str) -> KeyLimits:
        return self._limits


class KeyedLimits:
    """The deployment's default, with a managed key's own storage quota where it sets one
    (``photomaker keys create/set --storage-quota-bytes N --storage-quota-files N``).

    ``key_of`` finds the key of an owner id without a database read where it can: the API passes its key cache
    (``api/key_cache.py``), which every change reaches through the ``keys`` wake-up; the CLI a table it read once.
    """

    def __init__(self, default: LimitsPolicy, key_of: Callable[[str], ApiKey | None]) -> None:
        self._default, self._key_of = default, key_of

    def for_owner(self, owner: str) -> KeyLimits:
        limits = self._default.for_owner(owner)
        key = self._key_of(owner)
        if key is None:
            return limits
        own, default = key.limits, limits.storage
        quota = StorageQuota(
            default.max_bytes if own.storage_quota_bytes is None else _cap(own.storage_quota_bytes),
            default.max_files if own.storage_quota_files is None else _cap(own.storage_quota_files),
        )
        return replace(limits, storage=quota)


class QuotaExceeded(Exception):
    """Storing would take a key over its storage quota; nothing was stored. ``what`` is ``"bytes"`` or
    ``"files"``."""

    def __init__(self, what: str, usage: StorageUsage, quota: StorageQuota, adding_files: int,
                 adding_bytes: int) -> None:
        self.what, self.usage, self.quota = what, usage, quota
        if what == "files":
            message = (f"storage quota exceeded: this key has {usage.files} stored files, the limit is "
                       f"{quota.max_files} (the key's own quota, else PHOTOMAKER_STORAGE_QUOTA_FILES); stored files expire with the retention "
                       "time")
        else:
            message = (f"storage quota exceeded: this key has {usage.bytes} bytes stored, {adding_bytes} more would "
                       f"pass the limit of {quota.max_bytes} (the key's own quota, else PHOTOMAKER_STORAGE_QUOTA_BYTES); stored files expire "
                       "with the retention time")
        super().__init__(message)
        self.message = message


class UploadAlreadyCharged(Exception):
    """A signed upload's bytes were already charged (a second PUT racing the first): it is a used URL."""

"""API keys as the job store knows them: limits, records, usage, refusals. Plain data, no database code.

Managed keys live in the job database (``photomaker keys …``, ``/admin/keys``); keys given in configuration
(``--api-key``, ``PHOTOMAKER_API_KEYS``, the generated key) are registered there too, under stable names
(``config-1``, …), so listings, usage and per-key metrics cover every key. A key's *owner* (``key_`` + 20 hex
digits of its SHA-256) is what jobs are stored under; it identifies a key without revealing it.

Why SHA-256 and not a password hash: every secret is 256 random bits from :func:`new_secret`, so guessing is
hopeless however fast the hash is; slow hashes (bcrypt, argon2) exist for low-entropy passwords and would cost
milliseconds per request. The stored hash is compared in constant time all the same.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as _secrets
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = [
    "CONFIG_KIND",
    "KEYS_TOPIC",
    "LIMIT_MAX",
    "MANAGED_KIND",
    "ApiKey",
    "KeyExists",
    "KeyRevoked",
    "KeyLimits",
    "KeyUsage",
    "LimitExceeded",
    "QueueFull",
    "UnknownKey",
    "check_key_name",
    "hash_secret",
    "new_secret",
    "owner_of",
    "secret_prefix",
    "same_hash",
]

#: Wake-up topic announced after a key was created, revoked or changed: every replica reloads its key cache.
KEYS_TOPIC = "keys"
MANAGED_KIND = "managed"
#: Keys from configuration: registered so they have a name; limits and revocation do not apply to them.
CONFIG_KIND = "config"
#: Largest value a limit takes unless it says otherwise (an "absurd" limit is a typo, not a wish).
LIMIT_MAX = 1_000_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def new_secret() -> str:
    """A fresh key: ``pm_`` + 256 random bits, URL-safe."""
    return "pm_" + _secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """What the database stores of a key (hex SHA-256; see the module docstring for why a fast hash)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def owner_of(secret: str) -> str:
    """The owner id jobs are stored under (unchanged from the configured-keys-only releases)."""
    return "key_" + hash_secret(secret)[:20]


def secret_prefix(secret: str) -> str:
    """A short, non-secret prefix that tells keys apart in listings (``pm_`` + 5 characters: 30 of 256 bits)."""
    return secret[:8]


def same_hash(a: str, b: str) -> bool:
    """Constant-time equality of two hex digests."""
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


def check_key_name(name: str) -> str:
    """A key name as accepted: 1-64 of letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit.
    ValueError otherwise. ``config-*`` is reserved for configured keys."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"invalid key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    if name.startswith("config-"):
        raise ValueError(f"invalid key name {name!r}: names starting with 'config-' are reserved for configured keys")
    return name


def _limit(help: str, maximum: int = LIMIT_MAX, unset: str = "unlimited") -> Any:
    return field(default=None, metadata={"help": help, "max": maximum, "unset": unset})


@dataclass(frozen=True)
class KeyLimits:
    """One owner's limits; None means unlimited (for the storage quota: the deployment's default). The one place
    that says what a key may do.

    Adding a limit: a field here (its ``help`` becomes the CLI flag's and the API field's description, its
    ``maximum`` their bound: ``photomaker keys create/set --the-name N`` and ``/admin/keys`` take it with no
    further change), its column in
    ``jobs/sql/schema.py``'s ``api_keys`` plus a migration, and its enforcement where the limited thing happens."""

    #: Jobs of this key running at once; the claim skips the key's queued jobs while it is at the limit.
    max_concurrent: int | None = _limit("jobs of this key running at once (its other jobs wait while others' run)")
    #: Jobs of this key waiting (not running); a submit beyond it is refused with 429.
    max_queued: int | None = _limit("jobs of this key waiting; submits beyond it get 429")
    #: Accepted submits in any 60 s; beyond it 429.
    requests_per_minute: int | None = _limit("accepted submits in any 60 s; beyond it 429")
    #: Bytes this key may have stored at once (uploads, data URIs); None: the deployment's per-key default
    #: (``PHOTOMAKER_STORAGE_QUOTA_BYTES``), enforced through ``limits.KeyedLimits``.
    storage_quota_bytes: int | None = _limit(
        "bytes this key may have stored at once (uploads, data URIs); beyond it 413; 0: no limit", maximum=10**15,
        unset="the deployment's PHOTOMAKER_STORAGE_QUOTA_BYTES")
    #: Files this key may have stored at once; None: the deployment's per-key default.
    storage_quota_files: int | None = _limit(
        "files this key may have stored at once; beyond it 413; 0: no limit",
        unset="the deployment's PHOTOMAKER_STORAGE_QUOTA_FILES")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{f.name} must be a whole number, not {value!r}")
            if not 0 <= value <= f.metadata["max"]:
                raise ValueError(f"{f.name} must be between 0 and {f.metadata['max']}, not {value}")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each limit's description (CLI help, OpenAPI)."""
        return {f.name: f.metadata["help"] for f in fields(cls)}

    @classmethod
    def unset(cls, name: str) -> str:
        """What leaving limit ``name`` unset (None) means."""
        return next(f.metadata["unset"] for f in fields(cls) if f.name == name)

    @classmethod
    def maximum(cls, name: str) -> int:
        """The largest value limit ``name`` accepts."""
        return next(f.metadata["max"] for f in fields(cls) if f.name == name)

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)

    def updated(self, changes: dict[str, Any]) -> KeyLimits:
        """These limits with ``changes`` applied (unknown names: ValueError)."""
        unknown = set(changes) - set(self.names())
        if unknown:
            raise ValueError(f"unknown limit(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)

    @property
    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())


@dataclass(frozen=True)
class ApiKey:
    """A key's row (never its secret). ``prefix`` is empty for configured keys."""

    name: str
    owner: str
    kind: str
    prefix: str
    admin: bool
    limits: KeyLimits
    created_at: float
    last_used_at: float | None
    revoked_at: float | None
    #: Hex SHA-256 of the secret (managed keys; None for configured ones, whose secrets live in configuration).
    secret_hash: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, Any]:
        """What listings show (``keys list --json``, ``GET /admin/keys``): everything but the hash."""
        return {"name": self.name, "prefix": self.prefix, "kind": self.kind, "admin": self.admin,
                "created_at": self.created_at, "last_used_at": self.last_used_at,
                "revoked": self.revoked, "revoked_at": self.revoked_at, **self.limits.as_dict()}


@dataclass(frozen=True)
class KeyUsage:
    """Totals of one key over a period, from the counters written with each job's state changes."""

    name: str
    jobs_submitted: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    jobs_cancelled: int = 0
    images: int = 0
    inference_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class KeyExists(ValueError):
    """A key of that name exists already."""


class UnknownKey(KeyError):
    """No key of that name (or the operation does not apply to it: a configured key)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown key"


class KeyRevoked(Exception):
    """The submitting key was revoked (after the API process's cached check): HTTP 401, nothing stored."""


class LimitExceeded(Exception):
    """A submit refused by one of its key's limits (HTTP 429). Raised inside the submit's transaction, which then
    rolls back: nothing was stored."""

    def __init__(self, limit: str, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.limit = limit
        self.detail = detail
        self.retry_after_s = max(1, int(retry_after_s))


class QueueFull(LimitExceeded):
    """The deployment-wide cap on queued jobs (``PHOTOMAKER_MAX_QUEUED``) is reached (HTTP 503)."""

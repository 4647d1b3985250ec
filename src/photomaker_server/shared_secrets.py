"""Secrets every process of a deployment must agree on, and where they come from.

API replicas and workers may run on different machines that share the job database but no disk, so these secrets
cannot live in one host's data dir: a URL signed by one replica must verify on another, and webhook receivers pin
one signing key. Each comes from configuration when set, else from the database, created once by whichever process
starts first (the store's ``shared_secret`` is insert-if-absent).

A data dir of an older, single-machine installation holds them as files; the first start on the database adopts
those values, so signed upload URLs, pinned webhook keys and the generated API key keep working after the move.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .jobs.protocol import JobStore
from .private_files import write_private
from .settings import LOCAL_KEY_FILE, Settings

log = logging.getLogger(__name__)

#: Files of the single-machine layout (before the database held the secrets).
_LEGACY_FILES = {
    "upload-secret": "upload-secret",
    "token-secret": "token-secret",
    "webhook-signing-key": "webhook-signing-key.pem",
}


@dataclass(frozen=True)
class SharedSecrets:
    #: HMAC key of signed one-time upload URLs (``PUT /storage/upload/{id}?sig=``).
    upload_secret: bytes
    #: HMAC key of the short-lived upload tokens of fal's ``/storage/auth/token`` flow.
    token_secret: bytes
    #: Ed25519 private key (PEM) that signs webhooks; its public half is served as a JWKS.
    webhook_key_pem: bytes


def _legacy(data_dir: Path, name: str) -> bytes | None:
    path = data_dir / _LEGACY_FILES[name]
    if not path.is_file():
        return None
    value = path.read_bytes().strip() if name == "upload-secret" else path.read_bytes()
    return value or None


def _new_webhook_key() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


_GENERATORS = {
    "upload-secret": lambda: secrets.token_hex(32).encode("ascii"),
    "token-secret": lambda: secrets.token_bytes(32),
    "webhook-signing-key": _new_webhook_key,
}


def _shared(store: JobStore, data_dir: Path, name: str, configured: str | None) -> bytes:
    if configured:
        return configured.encode("utf-8")
    return store.shared_secret(name, lambda: _legacy(data_dir, name) or _GENERATORS[name]())


def load_shared_secrets(settings: Settings, store: JobStore) -> SharedSecrets:
    """The deployment's secrets: configuration first, else the database (adopting a legacy data dir's files)."""
    conf = settings.secret_values()
    return SharedSecrets(
        upload_secret=_shared(store, settings.data_dir, "upload-secret", conf.get("upload_secret")),
        token_secret=_shared(store, settings.data_dir, "token-secret", conf.get("token_secret")),
        webhook_key_pem=_shared(store, settings.data_dir, "webhook-signing-key", conf.get("webhook_signing_key")),
    )


@dataclass(frozen=True)
class GeneratedKey:
    key: str
    #: True when this start made the key (print it once, then only say where it is).
    created: bool


def generated_api_key(settings: Settings, store: JobStore) -> GeneratedKey | None:
    """The deployment's generated key when no key is configured (None otherwise).

    It lives in the database so every replica accepts it; a copy goes to this machine's data dir (0600), where
    the CLI and the web page opened from localhost pick it up. A key file left by an older installation becomes
    the deployment's key the first time.
    """
    if settings.api_keys:
        return None
    path = settings.data_dir / LOCAL_KEY_FILE
    existing = path.read_text().strip() if path.is_file() else ""
    made: list[bool] = []

    def create() -> bytes:
        made.append(not existing)
        return (existing or "pm_" + secrets.token_urlsafe(32)).encode("ascii")

    key = store.shared_secret("api-key", create).decode("ascii")
    if not existing:
        write_private(path, (key + "\n").encode("ascii"))
    elif existing != key:
        log.warning("%s holds a key other than the deployment's; both are accepted", path)
    return GeneratedKey(key, created=bool(made and made[0]))

"""One-time signed upload URLs (fal's ``storage/upload/initiate``), the part every storage backend shares.

fal's JS client PUTs the bytes to ``upload_url`` without an Authorization header, so the URL itself is the
credential: an unguessable id, an HMAC signature over what the upload will become, an expiry, and single use.
The backends keep the pending record and the one-time marker (each in its own atomic way); this module makes
and checks records and signatures. The HMAC key is the deployment's (``shared_secrets``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import asdict, dataclass
from typing import Any

from photomaker_server.storage.base import UploadError, clean_content_type, is_valid_token, new_token, sanitize_file_name

__all__ = ["MIN_SECRET_BYTES", "PendingUpload", "UploadSigner", "upload_url"]

#: Shortest accepted HMAC key (the secret file holds 64 hex characters).
MIN_SECRET_BYTES = 32


@dataclass(frozen=True)
class PendingUpload:
    """What an upload URL will store: the key is ``<token>/<file_name>``, known before the bytes arrive."""

    token: str
    file_name: str
    content_type: str
    expires_at: int

    @property
    def key(self) -> str:
        return f"{self.token}/{self.file_name}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> PendingUpload:
        """Raises ``UploadError("not_found")`` for anything that is not a record we wrote."""
        try:
            record = cls(str(data["token"]), str(data["file_name"]), str(data["content_type"]), int(data["expires_at"]))
        except (KeyError, TypeError, ValueError):
            raise UploadError("not_found", "Unknown upload URL") from None
        if not is_valid_token(record.token):
            raise UploadError("not_found", "Unknown upload URL")
        return record


def upload_url(base_url: str | None, upload_id: str, sig: str) -> str:
    """The API route a client PUTs the bytes to."""
    return f"{(base_url or '').rstrip('/')}/storage/upload/{upload_id}?sig={sig}"


class UploadSigner:
    """Makes pending uploads and checks PUTs against them with one HMAC key (shared by every API replica)."""

    def __init__(self, secret: bytes, max_upload_bytes: int | None = None) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the upload-signing secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.max_upload_bytes = max_upload_bytes

    def _sign(self, upload_id: str, pending: PendingUpload) -> str:
        message = f"upload\n{upload_id}\n{pending.token}\n{pending.file_name}\n{pending.expires_at}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def new(self, content_type: str, file_name: str, ttl_s: float, now: float) -> tuple[str, PendingUpload, str]:
        """``(upload id, record to keep, signature)`` for a fresh upload."""
        name = sanitize_file_name(file_name)
        pending = PendingUpload(new_token(), name, clean_content_type(content_type, name), math.ceil(now + ttl_s))
        upload_id = new_token()
        return upload_id, pending, self._sign(upload_id, pending)

    @staticmethod
    def check_id(upload_id: object) -> str:
        if not is_valid_token(upload_id):
            raise UploadError("not_found", "Unknown upload URL")
        return upload_id  # type: ignore[return-value]

    def check(self, upload_id: str, sig: object, pending: PendingUpload, size: int, now: float) -> None:
        """Everything but single use, in the order clients can act on: signature, expiry, size.
        None of these consumes the upload."""
        expected = self._sign(upload_id, pending)
        if not isinstance(sig, str) or not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "surrogateescape")):
            raise UploadError("bad_signature", "The upload URL's signature is not valid")
        if now > pending.expires_at:
            raise UploadError("expired", "The upload URL has expired")
        if self.max_upload_bytes is not None and size > self.max_upload_bytes:
            raise UploadError("too_large", f"The upload is larger than {self.max_upload_bytes} bytes")

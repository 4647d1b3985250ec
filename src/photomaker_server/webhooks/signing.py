"""fal's webhook signatures: Ed25519 over ``f"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(body)}"``, hex in
``X-Fal-Webhook-Signature`` beside ``X-Fal-Webhook-Request-Id``, ``-User-Id`` and ``-Timestamp`` (epoch seconds).
Receivers check the timestamp within ±300 s and try every key of the JWKS the API serves at
``/.well-known/jwks.json``."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HEADER_REQUEST_ID = "X-Fal-Webhook-Request-Id"
HEADER_USER_ID = "X-Fal-Webhook-User-Id"
HEADER_TIMESTAMP = "X-Fal-Webhook-Timestamp"
HEADER_SIGNATURE = "X-Fal-Webhook-Signature"

DEFAULT_TOLERANCE_S = 300


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed_message(request_id: str, user_id: str, timestamp: int | str, body: bytes) -> bytes:
    """The exact bytes fal signs."""
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def _public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = _b64url(raw)
    # kid: the RFC 7638 thumbprint, so it is stable for a key and changes when the key does.
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    kid = _b64url(hashlib.sha256(canonical.encode("ascii")).digest())
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}


class WebhookSigner:
    """Holds the service's Ed25519 webhook key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self._jwk = _public_jwk(private_key.public_key())

    @classmethod
    def generate(cls) -> WebhookSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> WebhookSigner:
        """The deployment's key (``shared_secrets``: configuration, else the job database), PEM PKCS#8."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the webhook signing key is not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the webhook signing key must be an Ed25519 private key")
        return cls(key)

    @property
    def kid(self) -> str:
        return self._jwk["kid"]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public key set receivers verify with (serve it as JSON)."""
        return {"keys": [dict(self._jwk)]}

    def sign(self, request_id: str, user_id: str, timestamp: int, body: bytes) -> str:
        """Hex Ed25519 signature of :func:`signed_message`."""
        return self._key.sign(signed_message(request_id, user_id, timestamp, body)).hex()

    def headers(self, request_id: str, user_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """Every header of a signed delivery (``timestamp`` defaults to now)."""
        ts = int(time.time()) if timestamp is None else int(timestamp)
        return {
            "Content-Type": "application/json",
            HEADER_REQUEST_ID: request_id,
            HEADER_USER_ID: user_id,
            HEADER_TIMESTAMP: str(ts),
            HEADER_SIGNATURE: self.sign(request_id, user_id, ts, body),
        }


def verify(
    jwks: Mapping[str, Any],
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Check a delivery the way a receiver should: all four headers present, timestamp within ``tolerance``
    seconds of ``now``, and a valid signature by any Ed25519 key in ``jwks``. Header names are
    case-insensitive. Returns False rather than raising, so it drops into an ``if``.

    Receivers need only ``cryptography``; this function is self-contained so it can be copied into one.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        request_id = lower[HEADER_REQUEST_ID.lower()]
        user_id = lower[HEADER_USER_ID.lower()]
        timestamp = lower[HEADER_TIMESTAMP.lower()]
        signature = bytes.fromhex(lower[HEADER_SIGNATURE.lower()])
        ts = int(timestamp)
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance:
        return False
    message = signed_message(request_id, user_id, timestamp, body)
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "x" not in jwk:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(_b64url_decode(jwk["x"])).verify(signature, message)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False

"""fal-compatible completion webhooks: body shape, Ed25519 signatures, and a retrying dispatcher.

fal's contract, which existing receivers already implement and which we therefore copy exactly:

* Body: ``{"request_id", "gateway_request_id", "status": "OK" | "ERROR", "payload", "error"}``.
* Signature: Ed25519 over the UTF-8 text ``f"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(body)}"``, hex
  encoded in ``X-Fal-Webhook-Signature``, next to ``X-Fal-Webhook-Request-Id``, ``-User-Id`` and
  ``-Timestamp`` (epoch seconds). Receivers check the timestamp within ±300 s and try every key of a JWKS.
  Our JWKS is served by the API at ``/.well-known/jwks.json``; the private key lives in the data directory.
* Retries: 10 attempts over about two hours (:func:`backoff_schedule`).

Deliveries come from the job store's outbox (``webhook_deliveries``), so they survive restarts, and the
dispatcher can run in any process that opens the store. The outbox holds only where to post; the dispatcher
renders the body from the finished job when it posts (``render_body``: output images' URLs are rendered from their
storage keys then, by the API process that knows the public URL), so the store never builds webhook bodies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .protocol import JobStore
from .records import Delivery, Job, StoreUnavailable
from .results import UrlRenderer, render_result

__all__ = [
    "HEADER_REQUEST_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "HEADER_USER_ID",
    "HttpPost",
    "WebhookDispatcher",
    "WebhookSigner",
    "backoff_schedule",
    "job_webhook_body",
    "signed_message",
    "verify",
    "webhook_body",
]

log = logging.getLogger(__name__)

HEADER_REQUEST_ID = "X-Fal-Webhook-Request-Id"
HEADER_USER_ID = "X-Fal-Webhook-User-Id"
HEADER_TIMESTAMP = "X-Fal-Webhook-Timestamp"
HEADER_SIGNATURE = "X-Fal-Webhook-Signature"

DEFAULT_TOLERANCE_S = 300
DEFAULT_TIMEOUT_S = 15.0


# --- body -------------------------------------------------------------------------------------------------------


def webhook_body(request_id: str, result: dict[str, Any] | None, error: dict[str, Any] | None) -> bytes:
    """The JSON fal POSTs on completion.

    ``error`` is the error body the status/result endpoints show (``{"detail": ..., "error_type": ...}``);
    when given, the status is ``ERROR``, ``payload`` is that body and ``error`` its human-readable ``detail``.
    We have no separate gateway, so ``gateway_request_id`` equals ``request_id``.
    """
    if error is not None:
        detail = error.get("detail")
        body = {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "ERROR",
            "payload": error,
            "error": detail if isinstance(detail, str) else json.dumps(detail),
        }
    else:
        body = {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "OK",
            "payload": result,
            "error": None,
        }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def job_webhook_body(job: Job, url_for: UrlRenderer | None = None) -> bytes:
    """:func:`webhook_body` for a finished job (the dispatcher's default ``render_body``). ``url_for`` renders the URLs
    of stored images from their keys; without it the keys stay."""
    if job.error is None:
        return webhook_body(job.id, render_result(job.result, url_for), None)
    return webhook_body(job.id, None, {"detail": job.error, "error_type": job.error_type})


# --- signatures -------------------------------------------------------------------------------------------------


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


# --- delivery ---------------------------------------------------------------------------------------------------


def backoff_schedule(max_attempts: int = 10, first_delay: float = 15.0, factor: float = 2.0) -> list[float]:
    """Seconds to wait after failed attempt 1, 2, … (``max_attempts - 1`` gaps; the first attempt is
    immediate).

    With the defaults: 15 s, 30 s, 1 min, 2 min, 4 min, 8 min, 16 min, 32 min, 64 min — 7665 s, about 2 h 8 min
    from the first attempt to the tenth, matching fal's "10 retries over about 2 hours". Doubling keeps the
    early retries quick (a receiver restarting) and the late ones sparse (a receiver down for a while).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    return [first_delay * factor**i for i in range(max_attempts - 1)]


#: ``post(url, body, headers, timeout) -> HTTP status``; raises on a transport error.
HttpPost = Callable[[str, bytes, Mapping[str, str], float], int]


def httpx_post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """Default transport: no redirects (a redirect could point anywhere, past the SSRF check), no proxies
    from the environment. The service plugs in a client that connects to the address it checked."""
    import httpx

    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        return client.post(url, content=body, headers=dict(headers)).status_code


class WebhookDispatcher:
    """Delivers due webhooks from the store's outbox, with retries.

    ``policy_check(url)`` runs before every attempt and raises to refuse (SSRF: private addresses); a refusal
    counts as a failed attempt, since DNS can change. ``http_post`` is injectable so the service can connect
    to the very address ``policy_check`` approved, and tests can record calls. ``render_body(job)`` builds the
    bytes to POST (and sign) for a finished job, at each attempt.
    """

    def __init__(
        self,
        store: JobStore,
        signer: WebhookSigner,
        policy_check: Callable[[str], None] = lambda url: None,
        http_post: HttpPost = httpx_post,
        *,
        render_body: Callable[[Job], bytes] = job_webhook_body,
        max_attempts: int = 10,
        schedule: list[float] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        batch_size: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.signer = signer
        self.policy_check = policy_check
        self.http_post = http_post
        self.render_body = render_body
        self.max_attempts = max_attempts
        self.schedule = backoff_schedule(max_attempts) if schedule is None else list(schedule)
        self.timeout = timeout
        self.batch_size = batch_size
        self.clock = clock

    def _delay_after(self, attempt: int) -> float:
        if not self.schedule:
            return 60.0
        return self.schedule[min(attempt - 1, len(self.schedule) - 1)]

    def attempt(self, delivery: Delivery) -> str | None:
        """One POST. None on a 2xx answer, otherwise why it failed."""
        # Outside the try: a database that is down is not the receiver's failed attempt (the pass is retried).
        job = self.store.get(delivery.job_id, with_input=False)
        if job is None:
            return "the request no longer exists"
        try:
            body = self.render_body(job)
            self.policy_check(delivery.url)
            headers = self.signer.headers(delivery.job_id, delivery.owner, body, int(self.clock()))
            headers["User-Agent"] = "photomaker-server-webhooks"
            status = self.http_post(delivery.url, body, headers, self.timeout)
        except Exception as exc:  # any failure is a failed attempt, recorded for operators
            return f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    def run_once(self, now: float | None = None) -> int:
        """Attempt every delivery due at ``now`` (one batch); returns how many were attempted."""
        now = self.clock() if now is None else now
        # The lease covers a whole batch of slow receivers, so no other dispatcher takes them meanwhile.
        lease = self.batch_size * (self.timeout + 5.0) + 30.0
        due = self.store.due_webhooks(now, limit=self.batch_size, lease_seconds=lease)
        for delivery in due:
            error = self.attempt(delivery)
            attempt_no = delivery.attempts + 1
            if error is None:
                self.store.mark_webhook(delivery.id, ok=True)
                log.info("webhook for %s delivered (attempt %d)", delivery.job_id, attempt_no)
            elif attempt_no >= self.max_attempts:
                self.store.mark_webhook(delivery.id, ok=False, error=error)
                log.warning("webhook for %s given up after %d attempts: %s", delivery.job_id, attempt_no, error)
            else:
                retry_at = now + self._delay_after(attempt_no)
                self.store.mark_webhook(delivery.id, ok=False, error=error, next_attempt_at=retry_at)
                log.info("webhook for %s failed (attempt %d): %s", delivery.job_id, attempt_no, error)
        return len(due)

    def run_forever(self, stop_event: threading.Event, interval: float = 1.0) -> None:
        """Poll until ``stop_event`` is set; errors are logged, never fatal (the outbox keeps the work)."""
        while not stop_event.is_set():
            try:
                busy = self.run_once()
            except StoreUnavailable:  # said once per outage by the store; the next pass retries
                busy = 0
            except Exception:  # e.g. a locked database: the next pass retries
                log.exception("webhook dispatcher pass failed")
                busy = 0
            if not busy:
                stop_event.wait(interval)

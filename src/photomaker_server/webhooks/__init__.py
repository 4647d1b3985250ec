"""fal-compatible completion webhooks: the body (:mod:`.body`), its Ed25519 signature (:mod:`.signing`) and the
retrying delivery from the job store's outbox in a thread of its own (:mod:`.dispatcher`)."""

from .body import job_webhook_body, webhook_body
from .dispatcher import HttpPost, WebhookDispatcher, backoff_schedule, deployment_dispatcher
from .signing import (
    HEADER_REQUEST_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_USER_ID,
    WebhookSigner,
    signed_message,
    verify,
)

__all__ = [
    "HEADER_REQUEST_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "HEADER_USER_ID",
    "HttpPost",
    "WebhookDispatcher",
    "WebhookSigner",
    "backoff_schedule",
    "deployment_dispatcher",
    "job_webhook_body",
    "signed_message",
    "verify",
    "webhook_body",
]

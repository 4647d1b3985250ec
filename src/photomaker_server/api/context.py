"""The per-application state every route reads: settings, job store, file storage, keys, signing keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from ..jobs.housekeeping import Housekeeper
from ..jobs.protocol import JobStore
from ..jobs.webhooks import WebhookSigner
from ..settings import Settings
from ..storage.base import FileStorage
from .auth import KeyRing


@dataclass
class AppContext:
    settings: Settings
    store: JobStore
    storage: FileStorage
    keys: KeyRing
    signer: WebhookSigner
    token_secret: bytes
    demo_warning: str | None = None
    housekeeper: Housekeeper | None = field(default=None, repr=False)

    def file_url(self, key: str) -> str:
        """The URL clients get for a stored file: rendered from its key whenever it is handed out."""
        return self.storage.url_for(key, self.settings.base_url)


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx

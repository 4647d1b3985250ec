"""The per-application state every route reads: settings, job store and its wake-ups, file storage, keys,
signing keys, the metrics registry, the job cache."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from prometheus_client import CollectorRegistry

from ..jobs.housekeeping import Housekeeper
from ..jobs.protocol import JobStore
from ..jobs.records import WorkerInfo
from ..jobs.wakeups import Wakeups
from ..settings import Settings
from ..storage.base import FileStorage
from ..webhooks import WebhookDispatcher, WebhookSigner
from .auth import KeyRing
from .connections import ConnectionBudget
from .held_polls import RepeatPolls
from .job_cache import JobCache
from .recent import Recent
from .stored_files import QuotaStorage


@dataclass
class AppContext:
    settings: Settings
    store: JobStore
    wakeups: Wakeups
    storage: FileStorage
    keys: KeyRing
    signer: WebhookSigner
    token_secret: bytes
    metrics: CollectorRegistry
    #: Clients' files go through this (quota-charged); ``storage`` directly only for reading and serving.
    files: QuotaStorage
    #: Open status streams and held /run calls per key, in this process.
    connections: ConnectionBudget
    #: Jobs clients poll, as last read, kept fresh by the wake-ups (status and result answer from it).
    jobs: JobCache
    #: The live workers as last read (``/health`` and ``/ready`` read the registry at most every half second).
    workers: Recent[list[WorkerInfo]]
    #: Which request each connection polled last: a repeat poll of a running request is held (``held_polls.py``).
    polls: RepeatPolls = field(default_factory=RepeatPolls)
    demo_warning: str | None = None
    housekeeper: Housekeeper | None = field(default=None, repr=False)
    webhooks: WebhookDispatcher | None = field(default=None, repr=False)

    def file_url(self, key: str) -> str:
        """The URL clients get for a stored file: rendered from its key whenever it is handed out."""
        return self.storage.url_for(key, self.settings.base_url)


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx

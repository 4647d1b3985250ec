"""The one place a process turns its settings into the deployment's shared parts: job store, wake-ups, secrets,
file storage, and where each key's limits come from.

The API replicas and the workers all call :func:`open_deployment`, so a setting means the same thing in every
process, and nothing else in the code picks a backend: everything downstream is typed against the protocols
(``JobStore``, ``Wakeups``, ``FileStorage``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.engine import make_url

from .jobs.database import parse_database_url
from .jobs.factory import open_job_database as open_job_database_at
from .jobs.protocol import JobStore
from .jobs.wakeups import Wakeups
from .webhooks import WebhookSigner
from .limits import DeploymentLimits, LimitsPolicy
from .settings import Settings
from .shared_secrets import SharedSecrets, load_shared_secrets
from .storage.base import FileStorage
from .storage.factory import storage_from_settings

log = logging.getLogger(__name__)


class DeploymentError(Exception):
    """A setting that cannot work (an unsupported database or storage URL, a malformed secret): one line for
    the operator."""


@dataclass
class Deployment:
    settings: Settings
    store: JobStore
    #: Change notifications: ``"work"`` wakes idle workers, ``"job:<id>"`` (status) and ``"logs:<id>"`` wake
    #: streams following that job.
    wakeups: Wakeups
    secrets: SharedSecrets
    webhook_signer: WebhookSigner
    storage: FileStorage
    #: Each key's budgets (storage quota, open streams, held /run calls): the deployment-wide default today.
    limits: LimitsPolicy

    def close(self) -> None:
        self.wakeups.close()
        self.store.close()


def open_deployment(settings: Settings) -> Deployment:
    """Open (and, when older, upgrade) the job database, then everything that depends on it.

    Raises ``StoreUnavailable`` when the database cannot be reached and ``SchemaTooNew`` when it was upgraded by
    a newer release than this one; callers turn those into one clear line.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store, wakeups = open_job_database(settings)
    try:
        secrets = load_shared_secrets(settings, store)
        signer = WebhookSigner.from_pem(secrets.webhook_key_pem)
        storage = storage_from_settings(settings, secrets.upload_secret)
    except ValueError as exc:
        wakeups.close()
        store.close()
        raise DeploymentError(str(exc)) from None
    except BaseException:
        wakeups.close()
        store.close()
        raise
    return Deployment(settings, store, wakeups, secrets, signer, storage, DeploymentLimits(settings))


def open_job_database(settings: Settings) -> tuple[JobStore, Wakeups]:
    """The job store and its wake-ups alone (what ``photomaker keys`` needs): the store announces its changes
    through the wake-ups, so the other processes of the deployment hear of them."""
    url = settings.job_database_url
    try:
        database = parse_database_url(url)
    except ValueError as exc:
        raise DeploymentError(f"database URL {_redact(url)}: {exc}") from None
    try:
        return open_job_database_at(database)
    except ValueError as exc:
        raise DeploymentError(str(exc)) from None


def _redact(url: str) -> str:
    """A database URL fit for a log line: the password replaced."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: say nothing of it
        return "(unparseable)"

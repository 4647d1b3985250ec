"""The FastAPI application: wiring only (context, routers, the fal proxy, housekeeping)."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..deployment import Deployment, open_deployment
from ..contract.notices import DEMO_WARNING
from ..inputs.archives import ArchiveLimits, declared_unpacked_bytes
from ..jobs.housekeeping import Housekeeper
from ..limits import KeyedLimits
from ..settings import Settings
from ..jobs.worker_registry import STALE_AFTER_S as WORKER_STALE_AFTER_S
from ..shared_secrets import generated_api_key
from ..webhooks import deployment_dispatcher
from . import errors, openapi
from .auth import KeyRing
from .body_limit import BodyLimitMiddleware, limits_for
from .connections import ConnectionBudget
from .context import AppContext
from .db_wait import DatabaseProbe, DatabaseWaitMiddleware
from .job_cache import JobCache
from .recent import Recent
from .metrics import metrics_registry
from .proxy import FalProxyMiddleware
from .stored_files import QuotaStorage
from .routes import admin, files, login, ops, queue

log = logging.getLogger(__name__)


def build_context(settings: Settings, deployment: Deployment | None = None) -> AppContext:
    """Everything the routes read; ``deployment`` (store, wake-ups, secrets, storage) is opened from the settings
    unless given."""
    deployment = deployment or open_deployment(settings)
    keys = KeyRing(settings, generated_api_key(settings, deployment.store), deployment.store)
    # A managed key's own limits, read from this process's key cache (no database read per check).
    limits = KeyedLimits(deployment.limits, keys.cache.by_owner) if keys.cache is not None else deployment.limits
    return AppContext(
        settings=settings,
        store=deployment.store,
        wakeups=deployment.wakeups,
        storage=deployment.storage,
        keys=keys,
        signer=deployment.webhook_signer,
        token_secret=deployment.secrets.token_secret,
        metrics=metrics_registry(deployment.store),
        files=QuotaStorage(deployment.store, deployment.storage, limits, settings.result_ttl_hours * 3600,
                           functools.partial(declared_unpacked_bytes, limits=ArchiveLimits.from_settings(settings))),
        connections=ConnectionBudget(limits),
        jobs=JobCache(deployment.wakeups, deployment.store.health),
        workers=Recent(deployment.store.health),
        demo_warning=DEMO_WARNING if settings.tiny else None,
    )


def app_from_env() -> FastAPI:
    """uvicorn's app factory for ``serve --api-processes K``: each child process builds its own app (and opens its
    own deployment) from the ``PHOTOMAKER_*`` environment its parent exported (see :mod:`..api_processes`)."""
    import multiprocessing
    import os
    import signal

    from ..logs import configure_logging
    from ..parent_death import set_parent_death_signal

    set_parent_death_signal(signal.SIGTERM)  # a SIGKILLed parent must not leave children holding the port
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the line above took effect
        raise SystemExit("the serve process that started this API process is gone")
    settings = Settings()
    # K processes write to one stream: each line says which one wrote it.
    configure_logging(settings.log_format, f"api[{os.getpid()}]", log_probes=settings.log_probes)
    return create_app(settings)


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """Put ``router``'s routes on the app's own router, in order. Not ``include_router``: in this FastAPI an
    included router stays a nested router that every request walks again (checking each included router's route
    set for changes, several times per request: a fifth of a status poll's CPU). Our routers carry no prefix or
    dependencies of their own, so their routes can be the app's directly; tags and response models are the
    routes' own."""
    assert not router.prefix and not router.dependencies, "a router with a prefix or dependencies needs include_router"
    app.router.routes.extend(router.routes)


def create_app(settings: Settings | None = None, ctx: AppContext | None = None, housekeeping: bool = True) -> FastAPI:
    ctx = ctx or build_context(settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        stop = threading.Event()
        following = None
        if ctx.keys.cache is not None:  # revocations and new keys from any process, through the wake-ups
            following = ctx.keys.cache.follow(ctx.wakeups, stop)
        if housekeeping:
            ctx.housekeeper = Housekeeper(ctx.settings, ctx.store, ctx.storage,
                                          worker_stale_after_s=WORKER_STALE_AFTER_S)
            ctx.housekeeper.start(stop)
            ctx.webhooks = deployment_dispatcher(ctx.settings, ctx.store, ctx.storage, ctx.signer)
            ctx.webhooks.start(stop)
        try:
            yield
        finally:
            stop.set()
            if following is not None:
                following.close()
            for thread_owner in (ctx.housekeeper, ctx.webhooks):
                if thread_owner is not None:
                    thread_owner.join()

    app = FastAPI(
        title="PhotoMaker server",
        version=__version__,
        summary="Self-hosted fal-ai/photomaker: fal's queue protocol, durable queue, storage, webhooks.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's /docs and /redoc load from a CDN; openapi.install serves /docs offline
        redoc_url=None,
    )
    app.state.ctx = ctx
    errors.install(app)
    # Inside the proxy (it sees the routes' own paths): requests wait here while the job database reconnects.
    app.add_middleware(DatabaseWaitMiddleware, probe=DatabaseProbe(ctx.store.health, ctx.store.ping),
                       wait_s=ctx.settings.database_wait_s)
    app.add_middleware(FalProxyMiddleware)
    # Added last, so it runs first: the body cap applies before anything reads a byte of the body.
    app.add_middleware(BodyLimitMiddleware,
                       limit_for=limits_for(ctx.settings.max_request_bytes, ctx.settings.max_download_bytes))
    # Order matters: the queue's literal paths first (the hottest: status polls), then the other fixed paths, then
    # the 404 for other app ids (``/{owner_ns}/{alias}`` patterns) last.
    for router in (queue.router, ops.router, login.router, admin.router, files.router, queue.unknown_apps):
        _add_routes(app, router)
    app.mount("/static", StaticFiles(directory=str(resources.files("photomaker_server") / "web")), name="static")
    openapi.install(app)
    return app


"""The FastAPI application: wiring only (context, routers, the fal proxy, housekeeping)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..engine.demo import DEMO_WARNING
from ..jobs.housekeeping import Housekeeper
from ..jobs.factory import open_job_store
from ..jobs.protocol import JobStore
from ..jobs.webhooks import WebhookSigner
from ..settings import Settings
from ..storage.factory import storage_from_settings
from . import errors, openapi
from .auth import KeyRing
from .body_limit import BodyLimitMiddleware, limits_for
from .context import AppContext
from .proxy import FalProxyMiddleware
from .routes import files, ops, queue

log = logging.getLogger(__name__)


def _secret(path: Path) -> bytes:
    if path.is_file():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    return value


def build_context(settings: Settings, store: JobStore | None = None) -> AppContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    demo_warning = None
    if settings.tiny:
        demo_warning = DEMO_WARNING
    return AppContext(
        settings=settings,
        store=store or open_job_store(settings.job_database_url),
        storage=storage_from_settings(settings),
        keys=KeyRing(settings),
        signer=WebhookSigner.load_or_create(settings.data_dir / "webhook-signing-key.pem"),
        token_secret=_secret(settings.data_dir / "token-secret"),
        demo_warning=demo_warning,
    )


def create_app(settings: Settings | None = None, ctx: AppContext | None = None, housekeeping: bool = True) -> FastAPI:
    ctx = ctx or build_context(settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        stop = threading.Event()
        if housekeeping:
            ctx.housekeeper = Housekeeper(ctx.settings, ctx.store, ctx.storage, ctx.signer)
            ctx.housekeeper.start(stop)
        try:
            yield
        finally:
            stop.set()
            if ctx.housekeeper:
                ctx.housekeeper.join()

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
    app.add_middleware(FalProxyMiddleware)
    # Added last, so it runs first: the body cap applies before anything reads a byte of the body.
    app.add_middleware(BodyLimitMiddleware,
                       limit_for=limits_for(ctx.settings.max_request_bytes, ctx.settings.max_download_bytes))
    # Order matters: fixed paths (files, ops) before queue's /{owner}/{alias} patterns.
    app.include_router(ops.router)
    app.include_router(files.router)
    app.include_router(queue.router)
    app.mount("/static", StaticFiles(directory=str(resources.files("photomaker_server") / "web")), name="static")
    openapi.install(app)
    return app


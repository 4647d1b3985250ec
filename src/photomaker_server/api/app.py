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
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..engine.demo import DEMO_WARNING
from ..jobs.housekeeping import Housekeeper
from ..jobs.factory import open_job_store
from ..jobs.protocol import JobStore
from ..jobs.webhooks import WebhookSigner
from ..settings import Settings
from ..storage.local import LocalStorage
from . import errors
from .auth import KeyRing
from .context import AppContext
from .proxy import FalProxyMiddleware
from .routes import files, ops, queue
from .schemas import PhotoMakerInput

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
        store=store or open_job_store(settings.db_path),
        storage=LocalStorage(settings.files_dir, settings.base_url, max_upload_bytes=settings.max_download_bytes),
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
    )
    app.state.ctx = ctx
    errors.install(app)
    app.add_middleware(FalProxyMiddleware)
    # Order matters: fixed paths (files, ops) before queue's /{owner}/{alias} patterns.
    app.include_router(ops.router)
    app.include_router(files.router)
    app.include_router(queue.router)
    app.mount("/static", StaticFiles(directory=str(resources.files("photomaker_server") / "web")), name="static")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict:
    """OpenAPI with the real request schema: the body is validated by hand (deployment-specific rules such as the
    trigger word need a validation context), so the schema is registered here."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    model_schema = PhotoMakerInput.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(model_schema.pop("$defs", {}))
    components["PhotoMakerInput"] = model_schema
    for path in ("/{owner_ns}/{alias}", "/run/{owner_ns}/{alias}"):
        body = schema["paths"].get(path, {}).get("post", {}).get("requestBody")
        if body:
            body["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/PhotoMakerInput"}
    app.openapi_schema = schema
    return schema

"""Operations and the web page: ``/health`` (live), ``/ready`` (model loaded), ``/metrics`` (Prometheus),
``/.well-known/jwks.json`` (webhook signing keys), ``/api/local-key`` (localhost only), ``/`` (the web page)."""

from __future__ import annotations

import ipaddress
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from ...contract.request import IMAGE_SIZE_PRESETS
from ...engine.demo import INSIGHTFACE_LICENSE_NOTICE, TINY_FACE_PACK
from ...engine.styles import default_style, style_names
from ...jobs.records import WorkerInfo, iso_utc
from ...worker.registry import STALE_AFTER_S as WORKER_STALE_AFTER_S
from ...settings import APP_ID, Settings
from ..context import get_ctx
from ..metrics import CONTENT_TYPE_LATEST, render_metrics

router = APIRouter(tags=["operations"])
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def _workers(ctx) -> list[WorkerInfo]:  # noqa: ANN001
    """Every live worker of the deployment (heartbeat within the staleness window), from the job database."""
    return ctx.store.workers(max_age_s=WORKER_STALE_AFTER_S)


def _describe(worker: WorkerInfo) -> dict:
    return {
        "id": worker.id,
        "host": worker.host,
        "state": worker.state,
        "detail": worker.detail,
        "device": worker.device,
        "demo_model": worker.demo_model,
        "loaded_bases": worker.loaded_bases,
        "current_job": worker.current_job,
        "last_heartbeat": iso_utc(worker.heartbeat_at),
    }


@router.get("/health", summary="Liveness, what this deployment runs, and every live worker")
def health(request: Request) -> dict:
    ctx = get_ctx(request)
    workers = _workers(ctx)
    demo = ctx.demo_warning
    return {
        "status": "ok",
        "app": APP_ID,
        "demo_model": demo is not None,
        "demo_warning": demo,
        "model": {
            "base_pipelines": {"photomaker": ctx.settings.base_model, "photomaker-style": ctx.settings.style_base_model}
            if demo is None else {"photomaker": "tiny random-weight demo", "photomaker-style": "tiny random-weight demo"},
            "photomaker_checkpoint": ctx.settings.photomaker_checkpoint if demo is None else "tiny random-weight demo",
            "default_version": ctx.settings.default_version,
            "photomaker_v2": _v2(ctx.settings, demo is not None),
        },
        "trigger_word": ctx.settings.trigger_word,
        "max_num_images": ctx.settings.max_num_images,
        "styles": style_names(),
        "default_style": default_style(),
        "image_size_presets": list(IMAGE_SIZE_PRESETS),
        "workers": [_describe(w) for w in workers],
    }


def _v2(settings: Settings, demo: bool) -> dict:
    """What v2 runs on, with the face models' licence whenever it is enabled."""
    if not settings.enable_v2:
        return {"enabled": False}
    return {
        "enabled": True,
        "checkpoint": "tiny random-weight demo" if demo else settings.photomaker_v2_checkpoint,
        "face_model": TINY_FACE_PACK if demo else settings.face_model or "buffalo_l (InsightFace's download)",
        "license_notice": INSIGHTFACE_LICENSE_NOTICE,
    }


@router.get("/ready", summary="Ready when at least one live worker has its model loaded")
def ready(request: Request) -> JSONResponse:
    workers = _workers(get_ctx(request))
    is_ready = any(w.state == "ready" for w in workers)
    body = {"ready": is_ready, "workers": [_describe(w) for w in workers]}
    return JSONResponse(body, status_code=200 if is_ready else 503)


@router.get("/metrics", summary="Prometheus metrics of the whole deployment", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    return Response(render_metrics(get_ctx(request).metrics), media_type=CONTENT_TYPE_LATEST)


@router.get("/.well-known/jwks.json", summary="Public keys that sign webhooks")
def jwks(request: Request) -> dict:
    return get_ctx(request).signer.jwks()


_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def _is_local(request: Request) -> bool:
    """A page opened on this machine: loopback peer, loopback ``Host`` (defeats DNS rebinding), and no sign of a
    reverse proxy in front (a proxy on the same machine would make every remote visitor look local)."""
    client = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(client).is_loopback
    except ValueError:
        loopback = False
    host = urlsplit(f"//{request.headers.get('host') or ''}").hostname or ""
    proxied = any(name in request.headers for name in _FORWARDING_HEADERS)
    return loopback and not proxied and host in LOCAL_HOSTS


@router.get("/api/local-key", summary="The server's generated key, for pages opened on this machine")
def local_key(request: Request) -> dict:
    ctx = get_ctx(request)
    if ctx.keys.local_key is None or ctx.settings.public_base_url or not _is_local(request):
        raise HTTPException(403, "The local key is only given to pages opened from localhost on a server with a "
                                 "generated key; type your key instead")
    return {"key": ctx.keys.local_key}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    page = resources.files("photomaker_server").joinpath("web/index.html").read_text(encoding="utf-8")
    return HTMLResponse(page)

"""Operations and the web page: ``/health`` (live), ``/ready`` (model loaded), ``/metrics`` (Prometheus),
``/.well-known/jwks.json`` (webhook signing keys), ``/`` (the web page; its sign-in is ``routes/login.py``)."""

from __future__ import annotations

from importlib import resources

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from ...contract.request import IMAGE_SIZE_PRESETS
from ...contract.notices import INSIGHTFACE_LICENSE_NOTICE, TINY_FACE_PACK
from ...contract.styles import default_style, style_names
from ...jobs.records import WorkerInfo, iso_utc
from ...jobs.worker_registry import STALE_AFTER_S as WORKER_STALE_AFTER_S
from ...settings import APP_ID, Settings
from ..context import get_ctx
from ..metrics import CONTENT_TYPE_LATEST, render_metrics

router = APIRouter(tags=["operations"])


async def _workers(ctx) -> list[WorkerInfo]:  # noqa: ANN001
    """Every live worker of the deployment (heartbeat within the staleness window), from the job database: read
    in a worker thread at most every ``recent.TTL_S`` per process (probes come many times a second)."""
    workers = ctx.workers.get()
    if workers is None:
        workers = await to_thread.run_sync(lambda: ctx.store.workers(max_age_s=WORKER_STALE_AFTER_S))
        ctx.workers.put(workers)
    return workers


def _describe(worker: WorkerInfo, viewer: str | None, own_jobs: set[str]) -> dict:
    """A worker as ``viewer`` may see it. Without a key (load balancers, anyone): state, device and model only,
    no host name (its id starts with it) and no request id. With a key: the host and id too, and the request it is
    running only when that request is the key's own."""
    public = {
        "state": worker.state,
        "detail": worker.detail,
        "device": worker.device,
        "demo_model": worker.demo_model,
        "loaded_bases": worker.loaded_bases,
        "last_heartbeat": iso_utc(worker.heartbeat_at),
    }
    if viewer is None:
        return public
    return {"id": worker.id, "host": worker.host, **public,
            "current_job": worker.current_job if worker.current_job in own_jobs else None}


async def _described(ctx, request: Request, workers: list[WorkerInfo]) -> list[dict]:  # noqa: ANN001
    """Every worker as the caller may see it (a missing or wrong key: as anyone; never a 401 for health checks).
    Only a caller with a key, while workers run jobs, needs the database (whose jobs they are): in a thread."""
    viewer = ctx.keys.owner_for(request.headers.get("authorization"))
    running = {w.current_job for w in workers if w.current_job} if viewer else set()

    def own_jobs() -> set[str]:
        return {job_id for job_id in running if ctx.store.get(job_id, owner=viewer, with_input=False) is not None}

    own = await to_thread.run_sync(own_jobs) if running else set()
    return [_describe(w, viewer, own) for w in workers]


@router.get("/health", summary="Liveness, what this deployment runs, and every live worker")
async def health(request: Request) -> dict:
    ctx = get_ctx(request)
    workers = await _workers(ctx)
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
        "workers": await _described(ctx, request, workers),
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
async def ready(request: Request) -> JSONResponse:
    ctx = get_ctx(request)
    workers = await _workers(ctx)
    is_ready = any(w.state == "ready" for w in workers)
    body = {"ready": is_ready, "workers": await _described(ctx, request, workers)}
    return JSONResponse(body, status_code=200 if is_ready else 503)


@router.get("/metrics", summary="Prometheus metrics of the whole deployment", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    return Response(render_metrics(get_ctx(request).metrics), media_type=CONTENT_TYPE_LATEST)


@router.get("/.well-known/jwks.json", summary="Public keys that sign webhooks")
def jwks(request: Request) -> dict:
    return get_ctx(request).signer.jwks()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    page = resources.files("photomaker_server").joinpath("web/index.html").read_text(encoding="utf-8")
    # The login link's token is in this page's URL: never send it on as a Referer, never keep the page cached.
    return HTMLResponse(page, headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})

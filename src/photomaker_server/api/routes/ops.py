"""Operations and the web page: ``/health`` (live), ``/ready`` (model loaded), ``/metrics`` (Prometheus),
``/.well-known/jwks.json`` (webhook signing keys), ``/api/local-key`` (localhost only), ``/`` (the web page)."""

from __future__ import annotations

import ipaddress
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from ...engine.options import IMAGE_SIZE_PRESETS
from ...engine.styles import default_style, style_names
from ...jobs.status import INFERENCE_BUCKETS, read_statuses
from ...settings import APP_ID
from ..context import get_ctx

router = APIRouter(tags=["operations"])
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def _workers(ctx) -> list:  # noqa: ANN001
    return [w for w in read_statuses(ctx.settings.data_dir) if w.fresh]


@router.get("/health", summary="Liveness, and what this server runs")
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
        },
        "trigger_word": ctx.settings.trigger_word,
        "max_num_images": ctx.settings.max_num_images,
        "styles": style_names(),
        "default_style": default_style(),
        "image_size_presets": list(IMAGE_SIZE_PRESETS),
        "workers": [{"state": w.state, "detail": w.detail, "device": w.device, "loaded_bases": w.loaded_bases}
                    for w in workers],
    }


@router.get("/ready", summary="Ready when a worker has its model loaded")
def ready(request: Request) -> JSONResponse:
    workers = _workers(get_ctx(request))
    is_ready = any(w.state == "ready" for w in workers)
    body = {"ready": is_ready, "workers": [{"state": w.state, "detail": w.detail} for w in workers]}
    return JSONResponse(body, status_code=200 if is_ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    ctx = get_ctx(request)
    counts = ctx.store.counts()
    outcomes = ctx.store.outcomes()
    workers = _workers(ctx)
    lines = [
        "# HELP photomaker_queue_depth Requests waiting in the queue.",
        "# TYPE photomaker_queue_depth gauge",
        f"photomaker_queue_depth {counts.get('queued', 0)}",
        "# HELP photomaker_jobs_running Requests being generated now.",
        "# TYPE photomaker_jobs_running gauge",
        f"photomaker_jobs_running {counts.get('running', 0)}",
        "# HELP photomaker_jobs_finished Finished requests kept in the store, by outcome.",
        "# TYPE photomaker_jobs_finished gauge",
    ]
    lines += [f'photomaker_jobs_finished{{outcome="{k}"}} {v}' for k, v in sorted(outcomes.items())]
    lines += [
        "# HELP photomaker_workers_ready Workers with the model loaded.",
        "# TYPE photomaker_workers_ready gauge",
        f"photomaker_workers_ready {sum(w.state == 'ready' for w in workers)}",
        "# HELP photomaker_inference_seconds Time from the start of generation to its images.",
        "# TYPE photomaker_inference_seconds histogram",
    ]
    for i, bound in enumerate(INFERENCE_BUCKETS):
        lines.append(f'photomaker_inference_seconds_bucket{{le="{bound}"}} {sum(w.inference_buckets[i] for w in workers)}')
    count = sum(w.inference_count for w in workers)
    lines += [
        f'photomaker_inference_seconds_bucket{{le="+Inf"}} {count}',
        f"photomaker_inference_seconds_sum {sum(w.inference_seconds_sum for w in workers):.6f}",
        f"photomaker_inference_seconds_count {count}",
        "# HELP photomaker_denoise_step_seconds Time per denoising step (UNet + scheduler).",
        "# TYPE photomaker_denoise_step_seconds summary",
        f"photomaker_denoise_step_seconds_sum {sum(w.step_seconds_sum for w in workers):.6f}",
        f"photomaker_denoise_step_seconds_count {sum(w.steps_total for w in workers)}",
        "# HELP photomaker_id_cache_hits_total ID photos whose embedding came from the cache.",
        "# TYPE photomaker_id_cache_hits_total counter",
        f"photomaker_id_cache_hits_total {sum(w.id_cache_hits for w in workers)}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


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

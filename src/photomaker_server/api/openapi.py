"""The API's documentation: the OpenAPI document and the Swagger UI at ``/docs``, served by this service itself.

Why not FastAPI's defaults: its ``/docs`` page loads Swagger UI from a CDN (a blank page on an offline or
firewalled deployment) and its ReDoc page does too, so Swagger UI's files come from the ``swagger-ui-bundle-v2``
package (Swagger UI 5, which reads OpenAPI 3.1) under ``/docs/assets`` and ReDoc is not offered. The OpenAPI
document is completed by hand where FastAPI cannot know: the request body is validated in the handler (its rules
need a validation context), and the examples use fal's field names so "Try it out" sends a request that works.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ..contract.styles import get_style
from ..settings import APP_ID
from ..contract.request import PhotoMakerInput
from . import paths as paths_

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
EXAMPLE_ID = "0d8a6a0c-3f6e-4c1c-9d43-6f1b0e6c2a17"
EXAMPLE_BASE = f"http://127.0.0.1:8000/{APP_ID}/requests/{EXAMPLE_ID}"
EXAMPLE_URLS = {"response_url": EXAMPLE_BASE, "status_url": f"{EXAMPLE_BASE}/status",
                "cancel_url": f"{EXAMPLE_BASE}/cancel"}

EXAMPLE_INPUT: dict[str, Any] = {
    "prompt": "portrait photo of a man img, film grain, perfect face",
    "image_archive_url": "https://example.com/photos-of-one-person.zip",
    "style": "Photographic",
    "base_pipeline": "photomaker",
    "negative_prompt": "blurry, deformed hands",
    "num_inference_steps": 50,
    "style_strength": 20,
    "num_images": 1,
    "guidance_scale": 5,
    "seed": 42,
}
EXAMPLE_SUBMITTED: dict[str, Any] = {"request_id": EXAMPLE_ID, **EXAMPLE_URLS, "status": "IN_QUEUE",
                                     "queue_position": 0}
EXAMPLE_STATUS: dict[str, dict[str, Any]] = {
    "queued": {"summary": "Waiting in the queue",
               "value": {"status": "IN_QUEUE", "request_id": EXAMPLE_ID, **EXAMPLE_URLS, "queue_position": 2}},
    "running": {"summary": "Running, with ?logs=1",
                "value": {"status": "IN_PROGRESS", "request_id": EXAMPLE_ID, **EXAMPLE_URLS, "logs": [
                    {"message": "Encoding 3 ID photos", "level": "INFO", "source": "USER",
                     "timestamp": "2026-01-01T12:00:01.250000+00:00"},
                    {"message": "Step 12/50", "level": "INFO", "source": "USER",
                     "timestamp": "2026-01-01T12:00:04.900000+00:00"}]}},
    "completed": {"summary": "Done",
                  "value": {"status": "COMPLETED", "request_id": EXAMPLE_ID, **EXAMPLE_URLS,
                            "metrics": {"inference_time": 9.69}}},
    "failed": {"summary": "Done, with an error",
               "value": {"status": "COMPLETED", "request_id": EXAMPLE_ID, **EXAMPLE_URLS,
                         "error": "the archive holds no photos", "error_type": "input_error"}},
}
EXAMPLE_RESULT: dict[str, Any] = {
    "images": [{"url": "http://127.0.0.1:8000/files/Zk3v9QpL2xYtR7mA/photomaker-42-0.png",
                "content_type": "image/png", "file_name": "photomaker-42-0.png", "file_size": 1543210,
                "width": 1024, "height": 1024}],
    "seed": 42,
    "prompt": get_style(EXAMPLE_INPUT["style"]).apply(EXAMPLE_INPUT["prompt"])[0],
    "timings": {"load": 0.0, "encode_prompt": 0.05, "id_encoding": 0.21, "denoise": 8.95, "decode": 0.48,
                "total": 9.69},
    "demo_model": False,
}
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
NOT_FOUND = {"description": "No such request for this key (requests belong to the key that made them)",
             "content": {"application/json": {"schema": ERROR_BODY, "example": {
                 "detail": f"Request {EXAMPLE_ID} not found", "error_type": "not_found"}}}}
UNAUTHORIZED = {"description": "Missing or invalid API key", "content": {"application/json": {"schema": ERROR_BODY,
    "example": {"detail": "Missing or invalid API key: send 'Authorization: Key <key>'", "error_type": "unauthorized"}}}}


def install(app: FastAPI) -> None:
    """``/docs`` (offline Swagger UI), its assets, and the completed ``/openapi.json``. The app must be created
    with ``docs_url=None, redoc_url=None`` so that FastAPI's CDN pages are not registered."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} – API docs",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
            # Keep the key across reloads; show how long "Try it out" took.
            swagger_ui_parameters={"persistAuthorization": True, "displayRequestDuration": True},
        )

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {})
    models = components.setdefault("schemas", {})
    model_schema = PhotoMakerInput.model_json_schema(ref_template="#/components/schemas/{model}")
    models.update(model_schema.pop("$defs", {}))
    models["PhotoMakerInput"] = model_schema
    paths = schema["paths"]
    for item in paths.values():  # auth.KEY_HEADER marked the operations that need a key
        for operation in item.values():
            if operation.get("security"):
                operation.setdefault("responses", {}).setdefault("401", UNAUTHORIZED)
            _our_validation_errors(operation)
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's own 422 shape: never answered here
        models.pop(name, None)
    _examples(paths)
    app.openapi_schema = schema
    return schema


def _our_validation_errors(operation: dict) -> None:
    """FastAPI declares its own 422 body (``HTTPValidationError``) for operations with parameters; this app answers
    every 422 in fal's shape (``errors.install``), i.e. an ``ErrorBody``: declare that instead."""
    response = operation.get("responses", {}).get("422")
    if response is not None:
        response["description"] = "The request is not valid: each problem names its field"
        response["content"] = {"application/json": {"schema": ERROR_BODY}}


def _json(operation: dict | None, status: str) -> dict | None:
    response = (operation or {}).get("responses", {}).get(status, {})
    return response.get("content", {}).get("application/json")


def _examples(paths: dict) -> None:
    """fal-named examples on the queue operations (their paths name the one app: ``api/paths.py``)."""
    for path, item in paths.items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter["name"] == "request_id":
                    parameter["example"] = EXAMPLE_ID
                    operation.setdefault("responses", {}).setdefault("404", NOT_FOUND)
    for path in (paths_.SUBMIT, paths_.RUN):
        post = paths.get(path, {}).get("post")
        body = (post or {}).get("requestBody")
        if body:
            body["content"]["application/json"] = {"schema": {"$ref": "#/components/schemas/PhotoMakerInput"},
                                                   "example": EXAMPLE_INPUT}
    if content := _json(paths.get(paths_.SUBMIT, {}).get("post"), "200"):
        content["example"] = EXAMPLE_SUBMITTED
    if content := _json(paths.get(paths_.STATUS, {}).get("get"), "200"):
        content["examples"] = EXAMPLE_STATUS
    for path, method in ((paths_.REQUEST, "get"), (paths_.RUN, "post")):
        if content := _json(paths.get(path, {}).get(method), "200"):
            content["example"] = EXAMPLE_RESULT

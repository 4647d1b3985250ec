"""Drives the UNMODIFIED official ``fal-client`` (PyPI) against a photomaker server; run as a subprocess.

    python fal_py_client.py env FACE.png        # configured by environment variables only (server with --tls):
        FAL_KEY=<key> FAL_RUN_HOST=127.0.0.1:PORT/run FAL_QUEUE_RUN_HOST=127.0.0.1:PORT SSL_CERT_FILE=<cert.pem>
    FAL_KEY=<key> python fal_py_client.py code FACE.png URL   # plain HTTP: the client's URL constants set in code

fal_client reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST when it is imported, hence one process per configuration.
Prints one JSON object: the outcome of each scenario (or its error), for tests/clients/test_py_client.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from pathlib import Path

APP = "fal-ai/photomaker"


def small(image_url: str, **extra) -> dict:
    return {"prompt": "a photo of a man img, film grain", "image_archive_url": image_url, "num_inference_steps": 4,
            "image_size": {"width": 64, "height": 64}, "seed": 1, **extra}


LONG = {"num_inference_steps": 100, "image_size": {"width": 512, "height": 512}}  # seconds, even on an idle machine


def status_json(status) -> dict:
    import fal_client

    out = {"kind": type(status).__name__}
    if isinstance(status, fal_client.Queued):
        out["position"] = status.position
    if isinstance(status, (fal_client.InProgress, fal_client.Completed)):
        out["logs"] = None if status.logs is None else [line["message"] for line in status.logs]
    if isinstance(status, fal_client.Completed):
        out.update(metrics=status.metrics, error=status.error, error_type=status.error_type)
    return out


def error_json(exc: BaseException) -> dict:
    import fal_client

    out = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, fal_client.FalClientHTTPError):
        out.update(status_code=exc.status_code, error_type=exc.error_type, detail=exc.response.json().get("detail"))
    return out


def attempt(fn):  # noqa: ANN001, ANN201
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported to the test as data
        out = error_json(exc)
        if not out.get("status_code"):
            out["traceback"] = traceback.format_exc()
        return out


async def attempt_async(coro):  # noqa: ANN001, ANN201
    try:
        return await coro
    except Exception as exc:  # noqa: BLE001
        out = error_json(exc)
        if not out.get("status_code"):
            out["traceback"] = traceback.format_exc()
        return out


def sync_scenarios(photo: str) -> dict:
    import fal_client

    out: dict = {}

    def subscribe() -> dict:
        updates, enqueued = [], []
        result = fal_client.subscribe(APP, small(photo, seed=42), with_logs=True, on_enqueue=enqueued.append,
                                      on_queue_update=lambda s: updates.append(status_json(s)))
        return {"result": result, "updates": updates, "enqueued": enqueued}

    out["subscribe"] = attempt(subscribe)

    def handle_api() -> dict:
        handle = fal_client.submit(APP, small(photo, seed=5))
        first = status_json(handle.status(with_logs=True))
        events = [status_json(s) for s in handle.iter_events(with_logs=True, interval=0.05)]
        result = handle.get()
        again = status_json(fal_client.status(APP, handle.request_id, with_logs=True))
        by_id = fal_client.result(APP, handle.request_id)
        cancel_done = attempt(handle.cancel)  # finished: 400 ALREADY_COMPLETED
        return {"request_id": handle.request_id, "urls": [handle.response_url, handle.status_url, handle.cancel_url],
                "first": first, "events": events, "result": result, "again": again, "by_id": by_id,
                "cancel_done": cancel_done}

    out["handle"] = attempt(handle_api)

    def cancel() -> dict:
        # A long request (the blocker) and one queued behind it: cancel the queued one at once, the blocker once
        # it is running (it stops at its next step).
        blocker = fal_client.submit(APP, small(photo, **LONG))
        queued = fal_client.submit(APP, small(photo, **LONG))
        before = status_json(fal_client.status(APP, queued.request_id))
        cancel_queued = attempt(lambda: fal_client.cancel(APP, queued.request_id))
        running = None
        for status in blocker.iter_events(with_logs=True, interval=0.05):
            if isinstance(status, fal_client.InProgress) and any("Step" in line["message"] for line in status.logs):
                running = status_json(status)
                break
        cancel_blocker = attempt(blocker.cancel)
        queued_events = [status_json(s) for s in queued.iter_events(with_logs=True, interval=0.05)]
        blocker_events = [status_json(s) for s in blocker.iter_events(with_logs=True, interval=0.05)]
        return {"before": before, "cancel_queued": cancel_queued, "running": running, "cancel_blocker": cancel_blocker,
                "queued_final": queued_events[-1], "blocker_final": blocker_events[-1],
                "queued_result": attempt(lambda: fal_client.result(APP, queued.request_id)),
                "blocker_result": attempt(blocker.get),
                "unknown_status": attempt(lambda: fal_client.status(APP, "no-such-request"))}

    out["cancel"] = attempt(cancel)
    out["run"] = attempt(lambda: fal_client.run(APP, small(photo, seed=9, num_images=2)))
    out["run_v2"] = attempt(lambda: fal_client.run(APP, small(photo, seed=4, photomaker_version="v2")))
    out["invalid"] = attempt(lambda: fal_client.submit(APP, small(photo, num_inference_steps=1000)))
    return out


async def async_scenarios(photo: str) -> dict:
    import fal_client

    out: dict = {}

    async def subscribe() -> dict:
        updates = []

        async def on_update(status) -> None:  # noqa: ANN001 - awaitable callbacks are supported
            updates.append(status_json(status))

        result = await fal_client.subscribe_async(APP, small(photo, seed=43), with_logs=True, on_queue_update=on_update)
        return {"result": result, "updates": updates}

    out["subscribe"] = await attempt_async(subscribe())

    async def handle_api() -> dict:
        handle = await fal_client.submit_async(APP, small(photo, seed=6))
        first = status_json(await handle.status())
        result = await handle.get()
        again = status_json(await fal_client.status_async(APP, handle.request_id, with_logs=True))
        by_id = await fal_client.result_async(APP, handle.request_id)
        return {"request_id": handle.request_id, "first": first, "result": result, "again": again, "by_id": by_id}

    out["handle"] = await attempt_async(handle_api())

    async def cancel() -> dict:
        blocker = await fal_client.submit_async(APP, small(photo, **LONG))
        queued = await fal_client.submit_async(APP, small(photo, **LONG))
        await fal_client.cancel_async(APP, queued.request_id)
        await blocker.cancel()
        finals = [status_json(await h.status(with_logs=True)) for h in (queued, blocker)]
        while any(f["kind"] != "Completed" for f in finals):
            await asyncio.sleep(0.05)
            finals = [status_json(await h.status(with_logs=True)) for h in (queued, blocker)]
        return {"finals": finals, "result": await attempt_async(blocker.get())}

    out["cancel"] = await attempt_async(cancel())
    out["run"] = await attempt_async(fal_client.run_async(APP, small(photo, seed=10)))
    return out


def upload_scenarios(face: Path, base: str) -> dict:
    """Uploads reach this service's storage once REST_URL and CDN_URL point at it (before the first upload)."""
    import fal_client
    import fal_client.client

    fal_client.client.REST_URL = base  # POST {REST_URL}/storage/auth/token, /storage/upload/initiate
    fal_client.client.CDN_URL = base  # POST {CDN_URL}/files/upload
    out: dict = {}
    out["upload_file"] = attempt(lambda: fal_client.upload_file(face))  # token flow (fal_v3)
    out["upload_bytes"] = attempt(lambda: fal_client.upload(face.read_bytes(), "image/png", "bytes.png"))
    # The fallback path: POST /storage/upload/initiate?storage_type=gcs, then PUT upload_url.
    out["upload_initiate"] = attempt(lambda: fal_client.upload(face.read_bytes(), "image/png", "initiated.png",
                                                              repository="fal"))
    if isinstance(out["upload_file"], str):
        out["subscribe_uploaded"] = attempt(lambda: fal_client.subscribe(APP, small(out["upload_file"], seed=77)))
    return out


def main() -> None:
    mode, face = sys.argv[1], Path(sys.argv[2])
    import fal_client
    import fal_client.client

    if mode == "code":
        url = sys.argv[3].rstrip("/")
        fal_client.client.QUEUE_URL_FORMAT = f"{url}/"  # read at call time: submit, status, result, cancel
        fal_client.client.RUN_URL_FORMAT = f"{url}/run/"  # read at call time: run
        base = url
    else:
        base = f"https://{os.environ['FAL_QUEUE_RUN_HOST']}"
    photo = fal_client.encode_file(face)  # a data: URI
    out = {
        "config": {"run": fal_client.client.RUN_URL_FORMAT, "queue": fal_client.client.QUEUE_URL_FORMAT},
        "sync": sync_scenarios(photo),
        "async": asyncio.run(async_scenarios(photo)) if mode == "env" else None,
        "uploads": upload_scenarios(face, base),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Drives the UNMODIFIED official ``fal-client`` against a scaled-out service; run as a subprocess.

Plain HTTP, so the client's URL constants are set in code (as tests/clients/fal_py_client.py does); ``FAL_KEY``
comes from the environment. The queue URL is read at call time, so one process can submit through one replica
and follow through another.

    fal_follow.py submit URL FACE.png COUNT STEPS SIZE  -> JSON list of request ids (submitted through URL)
    fal_follow.py follow URL ID...                      -> waits for all, prints {id: {"status": ..., "result": ...}}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

APP = "fal-ai/photomaker"


def point_at(url: str) -> None:
    import fal_client.client

    url = url.rstrip("/")
    fal_client.client.QUEUE_URL_FORMAT = f"{url}/"
    fal_client.client.RUN_URL_FORMAT = f"{url}/run/"


def submit(face: Path, count: int, steps: int, size: int) -> list[str]:
    import fal_client

    photo = fal_client.encode_file(face)
    ids = []
    for seed in range(count):
        body = {"prompt": "a photo of a man img, film grain", "image_archive_url": photo,
                "num_inference_steps": steps, "image_size": {"width": size, "height": size}, "seed": seed}
        ids.append(fal_client.submit(APP, body).request_id)
    return ids


def follow(ids: list[str], timeout: float = 600) -> dict:
    import fal_client

    out: dict = {}
    deadline = time.monotonic() + timeout
    while len(out) < len(ids) and time.monotonic() < deadline:
        for request_id in ids:
            if request_id in out:
                continue
            status = fal_client.status(APP, request_id, with_logs=True)
            if isinstance(status, fal_client.Completed):
                try:
                    result = fal_client.result(APP, request_id)
                except fal_client.FalClientHTTPError as exc:
                    result = {"error": exc.status_code, "message": str(exc)}
                out[request_id] = {"status": {"error": status.error, "error_type": status.error_type,
                                              "logs": [line["message"] for line in status.logs or []]},
                                   "result": result}
        time.sleep(0.2)
    missing = [i for i in ids if i not in out]
    if missing:
        raise TimeoutError(f"not completed after {timeout}s: {missing}")
    return out


def main() -> None:
    action, url, *rest = sys.argv[1:]
    point_at(url)
    if action == "submit":
        face, count, steps, size = Path(rest[0]), int(rest[1]), int(rest[2]), int(rest[3])
        print(json.dumps(submit(face, count, steps, size)))
    elif action == "follow":
        print(json.dumps(follow(rest)))
    else:
        raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    main()

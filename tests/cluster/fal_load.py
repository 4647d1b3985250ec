"""Steady load from the UNMODIFIED official ``fal-client``: submit, poll to the end, download every image; again.

    fal_load.py FRONT_URL FACE.png STOP_FILE LOOPS   (FAL_KEY from the environment)

``LOOPS`` threads each run ``fal_client.subscribe`` (which submits, then polls the status until COMPLETED and
fetches the result) followed by a download of each result image, until ``STOP_FILE`` exists. Whatever the client
raises is recorded, not retried: the point is to count what a user's script would see. Prints one JSON object:
``{"submitted": [ids], "completed": {id: [urls]}, "errors": [{"request_id", "error"}]}``.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import httpx

from fal_follow import APP, point_at

PNG = b"\x89PNG\r\n\x1a\n"


def loop(index: int, photo: str, stop: Path, out: dict, lock: threading.Lock) -> None:
    import fal_client

    seed = index * 100000
    while not stop.exists():
        seed += 1
        enqueued: list[str] = []
        arguments = {"prompt": "a photo of a man img", "image_archive_url": photo, "num_inference_steps": 3,
                     "image_size": {"width": 64, "height": 64}, "seed": seed}
        try:
            result = fal_client.subscribe(APP, arguments, on_enqueue=enqueued.append, interval=0.25)
            urls = [image["url"] for image in result["images"]]
            for url in urls:
                image = httpx.get(url, timeout=60)
                if image.status_code != 200 or not image.content.startswith(PNG):
                    raise RuntimeError(f"image {url}: HTTP {image.status_code}")
            with lock:
                out["completed"][enqueued[0]] = urls
        except Exception as exc:  # noqa: BLE001 - what the user would see, recorded
            with lock:
                out["errors"].append({"request_id": enqueued[0] if enqueued else None,
                                      "error": f"{type(exc).__name__}: {exc}"[:500]})
        finally:
            with lock:
                out["submitted"].extend(enqueued)


def main() -> None:
    import fal_client

    front, face, stop, loops = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    point_at(front)
    photo = fal_client.encode_file(face)
    out: dict = {"submitted": [], "completed": {}, "errors": []}
    lock = threading.Lock()
    threads = [threading.Thread(target=loop, args=(i, photo, stop, out, lock)) for i in range(loops)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

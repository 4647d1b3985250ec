"""Helpers of the service tests (imported as ``service.svc``; ``tests`` is on the path): an API helper over a
LiveServer, input photos as data URIs and zips, and a local HTTP server on 127.0.0.1 (photos to fetch, redirects,
a webhook receiver).

Everything here talks to loopback only. The shared ``live_server`` allow-lists 127.0.0.1 for fetching, so the
local HTTP server is reachable from its worker; every other private address must be refused by the service.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx

from helpers import image_bytes, make_face
from helpers import data_uri, zip_bytes  # noqa: F401 (tests import them from here too)
from live_server import API_KEY, APP

FACE_PNG = image_bytes(make_face(0))


def photos_zip(n: int = 3) -> bytes:
    return zip_bytes({f"photo_{i}.png": image_bytes(make_face(i)) for i in range(n)}, zipfile.ZIP_STORED)


class Api:
    """fal's queue protocol as a test sees it: submit, poll, wait, result, cancel (all asserting the basics)."""

    def __init__(self, server, key: str | None = API_KEY) -> None:  # noqa: ANN001
        self.server = server
        self.http: httpx.Client = server.client(key)

    def path(self, request_id: str, suffix: str = "") -> str:
        return f"/{APP}/requests/{request_id}{suffix}"

    def submit_response(self, body: object, headers: dict | None = None, params: dict | None = None) -> httpx.Response:
        return self.http.post(f"/{APP}", json=body, headers=headers or {}, params=params or {})

    def submit(self, body: dict, headers: dict | None = None, params: dict | None = None) -> str:
        response = self.submit_response(body, headers, params)
        assert response.status_code == 200, response.text
        return response.json()["request_id"]

    def status(self, request_id: str, logs: str | None = "1") -> dict:
        params = {"logs": logs} if logs is not None else {}
        response = self.http.get(self.path(request_id, "/status"), params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, request_id: str, timeout: float = 90) -> dict:
        """Poll until COMPLETED; the final status, with logs."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            body = self.status(request_id)
            if body["status"] == "COMPLETED":
                return body
            time.sleep(0.1)
        raise AssertionError(f"{request_id} not completed after {timeout}s: {self.status(request_id)}\n"
                             f"{self.server.log()[-3000:]}")

    def long_job(self, steps: int = 100, **fields) -> str:
        """Submit a job that runs for a while (512x512: about 0.1 s a step on the tiny model, more on slow CPUs)."""
        return self.submit(small(num_inference_steps=steps, image_size={"width": 512, "height": 512}, **fields))

    def wait_for_log(self, request_id: str, prefix: str, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            body = self.status(request_id)
            if any(m.startswith(prefix) for m in messages(body)):
                return body
            assert body["status"] != "COMPLETED", f"completed before logging {prefix!r}: {body}"
            time.sleep(0.05)
        raise AssertionError(f"{request_id} never logged {prefix!r}: {self.status(request_id)}")

    def result(self, request_id: str) -> httpx.Response:
        return self.http.get(self.path(request_id))

    def cancel(self, request_id: str) -> httpx.Response:
        return self.http.put(self.path(request_id, "/cancel"))

    def run(self, body: dict, timeout: float = 90) -> tuple[dict, dict]:
        """Submit, wait, and fetch the result (asserting success): (final status, result JSON)."""
        request_id = self.submit(body)
        final = self.wait(request_id, timeout)
        assert final.get("error") is None, final
        response = self.result(request_id)
        assert response.status_code == 200, response.text
        return final, response.json()

    @contextlib.contextmanager
    def busy(self) -> Iterator[str]:
        """Keep the (single) worker busy with a long job while the block runs; cancel it afterwards.

        Yields the blocker's request id once it is generating (its first Step log), so anything submitted inside
        the block is queued behind it. The blocker (100 steps at 512x512, over ten seconds on the tiny model) must
        still be running when the block ends, or what the block observed proves nothing.
        """
        blocker = self.long_job(seed=7)
        try:
            self.wait_for_log(blocker, "Step ")
            yield blocker
            assert self.status(blocker, "0")["status"] == "IN_PROGRESS", "the blocker finished too early"
        finally:
            self.cancel(blocker)
            self.wait(blocker)


def messages(status: dict) -> list[str]:
    return [entry["message"] for entry in status.get("logs") or []]


def small(image_url: str | None = None, **fields) -> dict:
    """A request that takes well under a second on the tiny model (1 step at 64x64 unless told otherwise)."""
    body = {"prompt": "a photo of a man img, film grain", "image_archive_url": image_url or data_uri(FACE_PNG),
            "num_inference_steps": 1, "image_size": {"width": 64, "height": 64}, "seed": 1}
    body.update(fields)
    return body


def small_stored(image_url: str | None = None, **fields):  # noqa: ANN201
    """:func:`small` as the job store keeps it (a ``StoredRequest``, its files as outside URLs), for tests that submit
    straight to the store."""
    from photomaker_server.contract.files import FileRef
    from photomaker_server.contract.stored import StoredRequest

    body = small(image_url, **fields)
    body["image_archive_url"] = FileRef.outside(body["image_archive_url"])
    if body.get("image_urls") is not None:
        body["image_urls"] = [FileRef.outside(url) for url in body["image_urls"]]
    if body.get("initial_image_url") is not None:
        body["initial_image_url"] = FileRef.outside(body["initial_image_url"])
    return StoredRequest(**body)


# --- a local HTTP server on 127.0.0.1: photos, redirects, a webhook receiver --------------------------------------


class LocalHttp:
    """``GET /face.png``, ``GET /photos.zip``, ``GET /redirect?to=URL`` (302), ``POST /hook/<name>`` (recorded,
    200) and ``POST /hook-fail/<name>`` (recorded, 500)."""

    def __init__(self) -> None:
        self.files = {"/face.png": (FACE_PNG, "image/png"), "/photos.zip": (photos_zip(2), "application/zip")}
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.gets: list[str] = []
        self._cond = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                with owner._cond:
                    owner.gets.append(self.path)
                if parts.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if parts.path not in owner.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data, content_type = owner.files[parts.path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner._cond:
                    owner.posts.append((self.path, dict(self.headers.items()), body))
                    owner._cond.notify_all()
                self.send_response(500 if self.path.startswith("/hook-fail/") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def wait_posts(self, path: str, count: int = 1, timeout: float = 30) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.time() + timeout
        with self._cond:
            while True:
                found = [(h, b) for p, h, b in self.posts if p == path]
                if len(found) >= count:
                    return found
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"no POST to {path} within {timeout}s (got {[p for p, _, _ in self.posts]})")
                self._cond.wait(left)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def parse_sse(lines: Iterator[str]) -> Iterator[dict]:
    """The JSON of each ``data:`` event (comments and blank lines skipped)."""
    for line in lines:
        if line.startswith("data:"):
            yield json.loads(line[5:].strip())

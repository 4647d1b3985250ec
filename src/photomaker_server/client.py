"""The CLI as a client of a running server: ``photomaker generate --server URL``, ``photomaker status``,
``photomaker cancel``.

It speaks the same HTTP API as fal's clients: photos go up through ``/storage/upload/multipart``, the request is
submitted to ``/fal-ai/photomaker``, progress comes from the status stream (Server-Sent Events, with logs), and the
images are downloaded from the result's URLs. Output matches in-process ``generate``: one image path per line on
stdout, then a JSON line with the seed; progress and warnings go to stderr.

API key: ``--key``, else ``$PHOTOMAKER_KEY``, else ``$FAL_KEY``, else ``<data dir>/api-key`` (the key a local server
generated). HTTPS: a self-signed server certificate is trusted through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import argparse
import json
import logging
import mimetypes
import os
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from .cli_args import CLIError, generation_fields, write_output
from .settings import APP_ID, LOCAL_KEY_FILE

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=10.0, read=120.0)  # the server sends a keep-alive every 10 s
MAX_RECONNECTS = 5


# --- connection ----------------------------------------------------------------------------------------------------
def resolve_key(args: argparse.Namespace) -> str:
    """--key, then PHOTOMAKER_KEY, then FAL_KEY, then the key file in the data dir (default .data)."""
    for value in (getattr(args, "key", None), os.environ.get("PHOTOMAKER_KEY"), os.environ.get("FAL_KEY")):
        if value and value.strip():
            return value.strip()
    path = Path(getattr(args, "data_dir", None) or ".data") / LOCAL_KEY_FILE
    try:
        key = path.read_text().strip()
    except OSError:
        key = ""
    if not key:
        raise CLIError(f"no API key: pass --key, or set PHOTOMAKER_KEY or FAL_KEY (no key file at {path})")
    return key


def _verify() -> ssl.SSLContext | bool:
    cafile = os.environ.get("SSL_CERT_FILE")
    if not cafile:
        return True
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise CLIError(f"cannot load SSL_CERT_FILE={cafile}: {exc}") from None


class Server:
    """A thin HTTP client for one server and key; every failure becomes a one-line ``CLIError``."""

    def __init__(self, url: str, key: str) -> None:
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url = url
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise; -v shows it
        verify = _verify()
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Key {key}"}, verify=verify,
                                 timeout=TIMEOUT, follow_redirects=True)
        # Result files are public, unguessable URLs (maybe on another host): fetched without the key.
        self.files = httpx.Client(verify=verify, timeout=TIMEOUT, follow_redirects=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self.files.close()

    def download(self, url: str) -> bytes:
        try:
            response = self.files.get(url)
        except httpx.HTTPError as exc:
            raise CLIError(_connection_problem(url, exc)) from None
        if response.status_code != 200:
            raise CLIError(f"cannot download {url}: {describe_error(response)}")
        return response.content

    def request(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CLIError(_connection_problem(self.url, exc)) from None
        if response.status_code not in ok:
            raise CLIError(describe_error(response))
        return response

    def queue_path(self, request_id: str, suffix: str = "") -> str:
        return f"/{APP_ID}/requests/{request_id}{suffix}"


def _connection_problem(url: str, exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"cannot verify the TLS certificate of {url} ({text}); for a self-signed server certificate set "
                "SSL_CERT_FILE to it (photomaker serve --tls writes it to <data dir>/tls/cert.pem)")
    return f"cannot reach {url}: {text}"


def describe_error(response: httpx.Response) -> str:
    """One line from fal's error bodies: ``{"detail": [{loc, msg}, ...]}`` (422) or ``{"detail": "..."}``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            loc = [str(p) for p in item.get("loc", []) if p != "body"] if isinstance(item, dict) else []
            msg = item.get("msg", item) if isinstance(item, dict) else item
            parts.append(f"{'.'.join(loc)}: {msg}" if loc else str(msg))
        message = "; ".join(parts)
    elif detail:
        message = str(detail)
    elif isinstance(body, dict) and body.get("status"):
        message = str(body["status"])
    else:
        message = response.text.strip()[:300] or response.reason_phrase
    if response.status_code == 401:
        return f"the server refused the API key ({message})"
    return f"{message} (HTTP {response.status_code})"


# --- generate --server ---------------------------------------------------------------------------------------------
def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None


def _upload(server: Server, path: Path) -> str:
    data = _read(path)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    response = server.request("POST", "/storage/upload/multipart", files={"file": (path.name, data, content_type)})
    return response.json()["url"]


def build_request(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    """Upload the photos (and initial image) and return the request body."""
    # Read every local file before uploading any, so a typo fails fast.
    for path in [*(args.images or []), *([args.archive] if args.archive else []),
                 *([args.initial_image] if args.initial_image else [])]:
        if not Path(path).is_file():
            raise CLIError(f"cannot read {path}: no such file")
    body: dict[str, Any] = {**generation_fields(args), "output_format": args.output_format}
    if args.archive:
        body["image_archive_url"] = _upload(server, args.archive)
    else:
        urls = [_upload(server, path) for path in args.images]
        body["image_archive_url"] = urls[0]
        if len(urls) > 1:
            body["image_urls"] = urls
    if args.initial_image:
        body["initial_image_url"] = _upload(server, args.initial_image)
    return body


def _events(server: Server, request_id: str) -> Iterator[dict[str, Any]]:
    """Status events from the SSE stream, reconnecting if it drops; ends after the COMPLETED event."""
    failures = 0
    while True:
        try:
            with server.http.stream("GET", server.queue_path(request_id, "/status/stream"), params={"logs": "1"},
                                    timeout=STREAM_TIMEOUT, headers={"Accept": "text/event-stream"}) as response:
                if response.status_code != 200:
                    response.read()
                    raise CLIError(describe_error(response))
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:].strip())
                    yield event
                    if event.get("status") == "COMPLETED":
                        return
            problem = f"the status stream of {request_id} closed before the request completed"
        except (httpx.TransportError, json.JSONDecodeError) as exc:
            problem = (_connection_problem(server.url, exc) if isinstance(exc, httpx.HTTPError)
                       else f"bad status stream from {server.url}: {exc}")
        # Dropped without COMPLETED (a server restart, a proxy timeout): ask again; the server replays the logs.
        failures += 1
        if failures > MAX_RECONNECTS:
            raise CLIError(problem)
        time.sleep(min(2.0 * failures, 10.0))


def _parse_step(message: str) -> tuple[int, int] | None:
    if not message.startswith("Step "):
        return None
    i, _, n = message[5:].partition("/")
    return (int(i), int(n)) if i.isdigit() and n.isdigit() else None


def follow(server: Server, request_id: str, warnings: list[str] | None = None) -> dict[str, Any]:
    """Show a progress bar (queue position, then denoising steps) until the request completes; the final status.
    WARN log lines are printed (and appended to ``warnings``); ERROR lines come back in the final status."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    final: dict[str, Any] = {}
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("submitted", total=None)
        for event in _events(server, request_id):
            final = event
            for line in event.get("logs") or []:
                message = str(line.get("message", ""))
                step = _parse_step(message)
                if step:
                    bar.update(task, description="denoising", completed=step[0], total=step[1])
                elif line.get("level") == "WARN":
                    bar.console.print(f"WARNING: {message}", markup=False, highlight=False)
                    if warnings is not None:
                        warnings.append(message)
                else:
                    bar.update(task, description=message[:60])
            if event.get("status") == "IN_QUEUE":
                bar.update(task, description=f"queued (position {event.get('queue_position', 0)})")
    return final


def generate_remote(args: argparse.Namespace) -> int:
    """``photomaker generate --server URL``: submit, follow, download; same stdout as in-process generate."""
    with Server(args.server, resolve_key(args)) as server:
        body = build_request(args, server)
        submitted = server.request("POST", f"/{APP_ID}", json=body).json()
        request_id = submitted["request_id"]
        print(f"request {request_id} submitted to {server.url}", file=sys.stderr)
        shown: list[str] = []
        try:
            final = follow(server, request_id, shown)
        except KeyboardInterrupt:
            print(f"cancelling request {request_id}", file=sys.stderr)
            server.request("PUT", server.queue_path(request_id, "/cancel"), ok=(202, 400, 404))
            raise
        if final.get("error"):
            raise CLIError(f"request {request_id} failed: {final['error']} ({final.get('error_type') or 'error'})")
        result = server.request("GET", server.queue_path(request_id)).json()
        if result.get("demo_model") and not any("demo model" in line for line in shown):
            print(f"WARNING: {result.get('demo_warning') or 'the server runs the random-weight demo model'}",
                  file=sys.stderr)
        seed = result["seed"]
        for i, image in enumerate(result["images"]):
            data = server.download(image["url"])
            print(write_output(args.out, f"photomaker-{seed}-{i}", args.output_format, data))
    print(json.dumps({"seed": seed, "timings": result.get("timings", {}), "demo_model": bool(result.get("demo_model")),
                      "request_id": request_id}))
    return 0


# --- status / cancel ----------------------------------------------------------------------------------------------
def show_status(args: argparse.Namespace) -> int:
    """``photomaker status ID``: the state, then the logs; for a finished request its images and seed."""
    with Server(args.server, resolve_key(args)) as server:
        status = server.request("GET", server.queue_path(args.request_id, "/status"), params={"logs": "1"}).json()
        state = status["status"]
        line = f"{args.request_id}: {state}"
        steps = [step for entry in status.get("logs") or [] if (step := _parse_step(str(entry.get("message", ""))))]
        if state == "IN_QUEUE":
            line += f" (position {status.get('queue_position', 0)})"
        elif state == "IN_PROGRESS" and steps:
            line += f" (step {steps[-1][0]}/{steps[-1][1]})"
        elif state == "COMPLETED" and status.get("error"):
            line += f" with error: {status['error']} ({status.get('error_type') or 'error'})"
        elif state == "COMPLETED" and (status.get("metrics") or {}).get("inference_time") is not None:
            line += f" in {status['metrics']['inference_time']:.2f}s"
        print(line)
        for entry in status.get("logs") or []:
            print(f"  {entry.get('timestamp', '')[:19]}  {entry.get('level', ''):5}  {entry.get('message', '')}")
        if state == "COMPLETED" and not status.get("error"):
            result = server.request("GET", server.queue_path(args.request_id)).json()
            for image in result.get("images", []):
                print(image["url"])
            print(json.dumps({"seed": result.get("seed")}))
    return 0


def cancel_request(args: argparse.Namespace) -> int:
    """``photomaker cancel ID``: 0 when cancellation was requested, 1 when the request had already completed."""
    with Server(args.server, resolve_key(args)) as server:
        response = server.request("PUT", server.queue_path(args.request_id, "/cancel"), ok=(202, 400))
        if response.status_code == 400:
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            if body.get("status") != "ALREADY_COMPLETED":
                raise CLIError(describe_error(response))
            print(f"{args.request_id}: already completed, nothing to cancel", file=sys.stderr)
            return 1
        print(f"{args.request_id}: cancellation requested")
    return 0

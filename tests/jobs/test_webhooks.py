"""Webhooks: fal's body shape, Ed25519 signatures verified through the JWKS, and the retrying dispatcher
against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from helpers import stored_request, stored_output
from photomaker_server.jobs.sql import SQLJobStore
from photomaker_server.webhooks.signing import _b64url_decode
from photomaker_server.webhooks import (
    HEADER_REQUEST_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_USER_ID,
    WebhookDispatcher,
    WebhookSigner,
    backoff_schedule,
    verify,
    webhook_body,
)

APP = "fal-ai/photomaker"


# --- a receiver -------------------------------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTs and answers with scripted status codes."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # consumed in order; 200 once empty
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def signer() -> WebhookSigner:
    return WebhookSigner.generate()


def finished_job(store: SQLJobStore, url: str, owner: str = "user-1", ok: bool = True):
    job = store.submit(owner, APP, stored_request(), webhook_url=url)
    store.claim("w", 30)
    if ok:
        store.complete(job.id, "w", stored_output(urls=("https://x/files/t/a.png",), seed=42), 1.0)
    else:
        store.fail(job.id, "w", "No face found in the photos", "bad_request")
    return job


# --- body -------------------------------------------------------------------------------------------------------


def test_webhook_body_shapes():
    ok = json.loads(webhook_body("r1", {"images": []}, None))
    assert ok == {
        "request_id": "r1",
        "gateway_request_id": "r1",
        "status": "OK",
        "payload": {"images": []},
        "error": None,
    }
    err = json.loads(webhook_body("r2", None, {"detail": "boom", "error_type": "runner_server_error"}))
    assert err == {
        "request_id": "r2",
        "gateway_request_id": "r2",
        "status": "ERROR",
        "payload": {"detail": "boom", "error_type": "runner_server_error"},
        "error": "boom",
    }
    validation = json.loads(webhook_body("r3", None, {"detail": [{"loc": ["body", "prompt"], "msg": "m"}]}))
    assert validation["status"] == "ERROR" and isinstance(validation["error"], str)


# --- keys and signatures ----------------------------------------------------------------------------------------


def test_key_from_pem_round_trips_and_refuses_other_keys():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert WebhookSigner.from_pem(pem).jwks() == WebhookSigner(key).jwks()
    assert WebhookSigner.generate().jwks() != WebhookSigner.from_pem(pem).jwks()
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for bad in (other, b"not a key"):
        with pytest.raises(ValueError):
            WebhookSigner.from_pem(bad)


def test_jwks_shape(signer):
    jwks = signer.jwks()
    (key,) = jwks["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["use"] == "sig" and key["alg"] == "EdDSA"
    assert "=" not in key["x"] and len(_b64url_decode(key["x"])) == 32
    assert key["kid"] == signer.kid and key["kid"]
    json.dumps(jwks)  # serialisable as is


def test_signature_is_fals_message_format(signer):
    """Checked with plain cryptography, the way fal's docs tell receivers to do it."""
    body = b'{"request_id":"r"}'
    sig = signer.sign("req-1", "user-1", 1_700_000_000, body)
    message = f"req-1\nuser-1\n1700000000\n{hashlib.sha256(body).hexdigest()}".encode()
    public = Ed25519PublicKey.from_public_bytes(_b64url_decode(signer.jwks()["keys"][0]["x"]))
    public.verify(bytes.fromhex(sig), message)  # raises if wrong


def test_verify_accepts_good_and_rejects_bad(signer):
    body = b'{"status":"OK"}'
    now = 1_700_000_000
    headers = signer.headers("req-1", "user-1", body, timestamp=now)
    jwks = signer.jwks()
    assert verify(jwks, headers, body, now=now)
    assert verify(jwks, {k.lower(): v for k, v in headers.items()}, body, now=now)  # case-insensitive
    assert verify(jwks, headers, body, now=now + 299)
    assert verify(jwks, headers, body, now=now - 299)
    assert not verify(jwks, headers, body, now=now + 301)  # replayed too late
    assert not verify(jwks, headers, body + b" ", now=now)  # body changed
    assert not verify(jwks, {**headers, HEADER_REQUEST_ID: "req-2"}, body, now=now)
    assert not verify(jwks, {**headers, HEADER_USER_ID: "user-2"}, body, now=now)
    assert not verify(jwks, {**headers, HEADER_TIMESTAMP: str(now + 1)}, body, now=now)
    assert not verify(jwks, {**headers, HEADER_SIGNATURE: "zz"}, body, now=now)
    assert not verify(WebhookSigner.generate().jwks(), headers, body, now=now)  # someone else's key
    missing = {k: v for k, v in headers.items() if k != HEADER_SIGNATURE}
    assert not verify(jwks, missing, body, now=now)
    # Key rotation: a JWKS with several keys verifies with any of them.
    rotated = {"keys": WebhookSigner.generate().jwks()["keys"] + jwks["keys"]}
    assert verify(rotated, headers, body, now=now)


def test_backoff_schedule_spans_about_two_hours():
    delays = backoff_schedule()
    assert len(delays) == 9  # 10 attempts, the first immediate
    assert delays[0] == 15 and all(b == 2 * a for a, b in itertools.pairwise(delays))
    assert 1.75 * 3600 <= sum(delays) <= 2.25 * 3600
    assert backoff_schedule(1) == []
    with pytest.raises(ValueError):
        backoff_schedule(0)


# --- dispatcher -------------------------------------------------------------------------------------------------


def test_delivery_to_a_real_receiver_verifies_with_the_jwks(tmp_path, signer, receiver):
    store = SQLJobStore(tmp_path / "jobs.db")
    job = finished_job(store, receiver.url, owner="user-7")
    checked: list[str] = []
    dispatcher = WebhookDispatcher(store, signer, policy_check=checked.append)
    assert dispatcher.run_once() == 1
    assert checked == [receiver.url]
    (headers, body) = receiver.requests[0]
    assert verify(signer.jwks(), headers, body)
    assert headers[HEADER_REQUEST_ID] == job.id and headers[HEADER_USER_ID] == "user-7"
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["status"] == "OK" and payload["request_id"] == job.id and payload["payload"]["seed"] == 42
    (row,) = store.webhook_deliveries(job.id)
    assert row.delivered_at is not None and row.attempts == 1
    assert dispatcher.run_once() == 0  # nothing left
    store.close()


def test_error_results_are_delivered_as_error(tmp_path, signer, receiver):
    store = SQLJobStore(tmp_path / "jobs.db")
    finished_job(store, receiver.url, ok=False)
    WebhookDispatcher(store, signer).run_once()
    payload = json.loads(receiver.requests[0][1])
    assert payload["status"] == "ERROR" and payload["payload"]["error_type"] == "bad_request"
    store.close()


def test_retry_after_a_500_then_success(tmp_path, signer, receiver):
    store = SQLJobStore(tmp_path / "jobs.db")
    job = finished_job(store, receiver.url)
    receiver.statuses = [500]
    dispatcher = WebhookDispatcher(store, signer)
    now = time.time()
    assert dispatcher.run_once(now) == 1
    (row,) = store.webhook_deliveries(job.id)
    assert row.delivered_at is None and row.attempts == 1 and row.last_error == "HTTP 500"
    assert row.next_attempt_at == pytest.approx(now + 15)
    assert dispatcher.run_once(now + 14) == 0  # not due yet
    assert dispatcher.run_once(now + 15) == 1
    (row,) = store.webhook_deliveries(job.id)
    assert row.delivered_at is not None and row.attempts == 2
    assert len(receiver.requests) == 2
    # Each attempt is signed afresh and both verify; the body is byte-identical.
    assert all(verify(signer.jwks(), h, b) for h, b in receiver.requests)
    assert receiver.requests[0][1] == receiver.requests[1][1]
    store.close()


def test_gives_up_after_max_attempts(tmp_path, signer, receiver):
    store = SQLJobStore(tmp_path / "jobs.db")
    job = finished_job(store, receiver.url)
    receiver.statuses = [503] * 10
    dispatcher = WebhookDispatcher(store, signer, max_attempts=3)
    now = time.time()
    for t in (now, now + 15, now + 45):  # 15 s then 30 s later
        assert dispatcher.run_once(t) == 1
    (row,) = store.webhook_deliveries(job.id)
    assert row.given_up and row.attempts == 3 and row.last_error == "HTTP 503"
    assert dispatcher.run_once(now + 10**6) == 0
    assert len(receiver.requests) == 3
    store.close()


def test_policy_refusal_and_transport_errors_count_as_failed_attempts(tmp_path, signer):
    store = SQLJobStore(tmp_path / "jobs.db")
    job = finished_job(store, "http://10.0.0.1/hook")
    posted: list[str] = []

    def refuse(url: str) -> None:
        raise PermissionError("private address refused")

    dispatcher = WebhookDispatcher(store, signer, policy_check=refuse, http_post=lambda *a: posted.append(a[0]) or 200)
    dispatcher.run_once(time.time())
    assert posted == []  # never contacted
    (row,) = store.webhook_deliveries(job.id)
    assert row.attempts == 1 and "private address refused" in row.last_error and not row.given_up

    def broken(url, body, headers, timeout):
        assert timeout == 15.0
        raise ConnectionError("connection refused")

    WebhookDispatcher(store, signer, http_post=broken).run_once(time.time() + 15)
    (row,) = store.webhook_deliveries(job.id)
    assert row.attempts == 2 and "connection refused" in row.last_error
    store.close()


def test_outbox_survives_a_restart(tmp_path, signer, receiver):
    store = SQLJobStore(tmp_path / "jobs.db")
    job = finished_job(store, receiver.url)
    store.close()  # the process goes away before any delivery

    reopened = SQLJobStore(tmp_path / "jobs.db")
    assert WebhookDispatcher(reopened, signer).run_once() == 1
    headers, body = receiver.requests[0]
    assert headers[HEADER_REQUEST_ID] == job.id
    assert verify(signer.jwks(), headers, body)
    reopened.close()


def test_run_forever_delivers_and_stops(tmp_path, signer, receiver):
    store = SQLJobStore(tmp_path / "jobs.db")
    finished_job(store, receiver.url)
    stop = threading.Event()
    thread = threading.Thread(target=WebhookDispatcher(store, signer).run_forever, args=(stop, 0.05))
    thread.start()
    deadline = time.time() + 10
    while not receiver.requests and time.time() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert len(receiver.requests) == 1
    store.close()


def test_the_body_is_rendered_at_delivery_by_the_injected_renderer(tmp_path, signer, receiver):
    store = SQLJobStore(tmp_path / "jobs.db")
    job = finished_job(store, receiver.url)
    rendered: list[str] = []

    def render(j) -> bytes:  # noqa: ANN001
        rendered.append(j.id)
        return json.dumps({"custom": j.id, "seed": j.result.seed}).encode()

    receiver.statuses = [500]
    dispatcher = WebhookDispatcher(store, signer, render_body=render)
    now = time.time()
    dispatcher.run_once(now)
    dispatcher.run_once(now + 15)
    assert rendered == [job.id, job.id]
    assert [json.loads(body) for _, body in receiver.requests] == [{"custom": job.id, "seed": 42}] * 2
    assert all(verify(signer.jwks(), h, b) for h, b in receiver.requests)  # the rendered bytes are what is signed
    store.close()


def test_two_dispatchers_never_post_the_same_delivery(db_path, signer):
    """Two processes' dispatchers (a store each) drain one outbox at once: each delivery is posted once."""
    owner = SQLJobStore(db_path)
    jobs = [finished_job(owner, f"https://example.com/hook/{i}") for i in range(24)]
    posted: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def post(url, body, headers, timeout):  # noqa: ANN001
        with lock:
            posted.append(headers[HEADER_REQUEST_ID])
        time.sleep(0.005)
        return 200

    def drain(store: SQLJobStore) -> None:
        dispatcher = WebhookDispatcher(store, signer, http_post=post, batch_size=3)
        barrier.wait()
        while dispatcher.run_once():
            pass

    stores = [SQLJobStore(db_path) for _ in range(2)]
    threads = [threading.Thread(target=drain, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(posted) == sorted(j.id for j in jobs)
    assert all(owner.webhook_deliveries(j.id)[0].delivered_at is not None for j in jobs)
    for s in [owner, *stores]:
        s.close()

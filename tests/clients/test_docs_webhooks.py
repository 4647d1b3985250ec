"""The verification snippets of docs/webhooks.md, run as written against a real signed delivery.

A request with ``?fal_webhook=`` is sent to the live server; its delivery to a local receiver (headers and raw body)
is then checked by the documented Python code (executed from the doc) and the documented JavaScript (run by node),
both fetching the JWKS from the server. Tampered bodies, other keys and stale timestamps must be refused.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service.svc import LocalHttp, data_uri, small

pytestmark = pytest.mark.clients
DOC = Path(__file__).parents[2] / "docs" / "webhooks.md"


def _block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, f"expected one {language} block in {DOC.name}"
    return blocks[0]


@pytest.fixture(scope="module")
def delivery(live_server):
    """(headers, raw body) of one real delivery: a success."""
    from service.svc import Api

    receiver = LocalHttp()
    try:
        api = Api(live_server)
        request_id = api.submit(small(), params={"fal_webhook": f"{receiver.url}/hook/docs"})
        headers, body = receiver.wait_posts("/hook/docs", timeout=120)[0]
        assert json.loads(body)["request_id"] == request_id
        yield headers, body
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def error_delivery(live_server):
    """(headers, raw body) of a delivery for a failed request."""
    from service.svc import FACE_PNG, Api

    receiver = LocalHttp()
    try:
        api = Api(live_server)
        api.submit(small(data_uri(FACE_PNG[:100])), params={"fal_webhook": f"{receiver.url}/hook/docs-error"})
        yield receiver.wait_posts("/hook/docs-error", timeout=120)[0]
    finally:
        receiver.close()


def _stale(headers: dict[str, str]) -> dict[str, str]:
    out = dict(headers)
    for name in out:
        if name.lower() == "x-fal-webhook-timestamp":
            out[name] = str(int(out[name]) - 3600)
    return out


def test_the_python_snippet_verifies_a_real_delivery(live_server, delivery, error_delivery):
    namespace: dict = {}
    exec(compile(_block("python"), str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    jwks = namespace["fetch_jwks"](live_server.url)
    verify = namespace["verify_webhook"]
    headers, body = delivery
    assert json.loads(body)["status"] == "OK" and json.loads(body)["payload"]["images"]
    assert verify(jwks, headers, body)
    err_headers, err_body = error_delivery
    assert json.loads(err_body)["status"] == "ERROR" and json.loads(err_body)["payload"]["error_type"] == "input_error"
    assert verify(jwks, err_headers, err_body)
    # What must fail: a changed body, another request's signature, a stale timestamp, a missing header, other keys.
    assert not verify(jwks, headers, body.replace(b'"OK"', b'"ERROR"'))
    assert not verify(jwks, headers, err_body)
    assert not verify(jwks, _stale(headers), body)
    assert not verify(jwks, {k: v for k, v in headers.items() if "signature" not in k.lower()}, body)
    from photomaker_server.webhooks import WebhookSigner

    assert not verify(WebhookSigner.generate().jwks(), headers, body)


def test_the_javascript_snippet_verifies_a_real_delivery(live_server, delivery, tmp_path):
    node = shutil.which("node")
    assert node, "docs/webhooks.md's JavaScript needs node (`make test-deps`)"
    headers, body = delivery
    (tmp_path / "verify.mjs").write_text(_block("javascript"))
    (tmp_path / "cases.json").write_text(json.dumps({
        "good": [{k.lower(): v for k, v in headers.items()}, body.decode()],
        "tampered": [{k.lower(): v for k, v in headers.items()}, body.decode().replace('"OK"', '"ERROR"')],
        "stale": [{k.lower(): v for k, v in _stale(headers).items()}, body.decode()],
    }))
    (tmp_path / "run.mjs").write_text(
        'import { readFileSync } from "node:fs";\n'
        'import { fetchJwks, verifyWebhook } from "./verify.mjs";\n'
        "const jwks = await fetchJwks(process.argv[2]);\n"
        'const cases = JSON.parse(readFileSync("cases.json", "utf8"));\n'
        "const out = {};\n"
        "for (const [name, [headers, body]] of Object.entries(cases)) {\n"
        '  out[name] = verifyWebhook(jwks, headers, Buffer.from(body, "utf8"));\n'
        "}\n"
        "console.log(JSON.stringify(out));\n"
    )
    done = subprocess.run([node, "run.mjs", live_server.url], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"good": True, "tampered": False, "stale": False}

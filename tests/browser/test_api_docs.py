"""``/docs`` in a real Chromium with the outside world cut off: the Swagger UI and everything it loads come from the
service itself, the Authorize dialog takes fal's ``Key <key>``, and "Try it out" sends it.

Every request to a host other than the loopback is aborted and recorded; the test asserts there were none (a page
that loads Swagger UI from a CDN renders nothing here)."""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

import pytest

from live_server import API_KEY

pytestmark = pytest.mark.browser
STATUS_PATH = "/fal-ai/photomaker/requests/{request_id}/status"


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def docs_page(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    context.set_default_timeout(20_000)
    outside: list[str] = []

    def guard(route) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or _loopback(url):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{live_server.url}/docs")
    yield page
    context.close()
    assert not outside, f"/docs reached outside this machine: {outside}"
    assert not errors, f"uncaught errors in the page: {errors}"


def _operation(page, method: str, path: str):
    return page.locator(f".opblock-{method.lower()}").filter(
        has=page.locator(f'.opblock-summary-path[data-path="{path}"]'))


def test_docs_render_offline_with_the_operations(docs_page, tmp_path):
    page = docs_page
    page.wait_for_selector(".opblock")
    paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.dataset.path)")
    for expected in ("/fal-ai/photomaker", STATUS_PATH, "/fal-ai/photomaker/requests/{request_id}",
                     "/fal-ai/photomaker/requests/{request_id}/cancel", "/storage/upload/multipart", "/health"):
        assert expected in paths, paths
    assert "PhotoMaker server" in page.inner_text(".info .title")
    # The protected operations carry a lock; the open ones (health) do not.
    assert _operation(page, "get", STATUS_PATH).locator(".authorization__btn").count() == 1
    assert _operation(page, "get", "/health").locator(".authorization__btn").count() == 0
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)


def test_submit_documents_fal_fields_with_an_example(docs_page):
    page = docs_page
    page.wait_for_selector(".opblock")
    submit = _operation(page, "post", "/fal-ai/photomaker")
    submit.locator(".opblock-summary").click()
    example = submit.locator(".body-param__example, .highlight-code .microlight").first
    example.wait_for()
    body = json.loads(example.inner_text())
    assert body["prompt"].count("img") == 1 and body["image_archive_url"].startswith("https://")
    assert {"style", "num_inference_steps", "guidance_scale", "seed"} <= set(body)


def test_authorize_then_try_it_out_sends_the_key(docs_page, live_server, tmp_path):
    page = docs_page
    page.wait_for_selector(".opblock")

    # The Authorize dialog: one apiKey scheme on the Authorization header, which explains the "Key " prefix.
    page.click(".auth-wrapper .authorize")
    dialog = page.locator(".modal-ux")
    dialog.wait_for()
    assert "Authorization" in dialog.inner_text() and "Key <your key>" in dialog.inner_text()
    dialog.locator("input").fill(f"Key {API_KEY}")
    dialog.locator(".auth-btn-wrapper .authorize").click()
    dialog.locator(".auth-btn-wrapper .btn-done, .auth-btn-wrapper .close-modal").first.click()
    assert page.locator(".auth-wrapper .authorize.locked").count() == 1, "the padlock shows the key is set"

    # "Try it out" on the status endpoint, for a request that does not exist: 404 (a missing key would be 401).
    status = _operation(page, "get", STATUS_PATH)
    status.locator(".opblock-summary").click()
    status.locator(".try-out__btn").click()
    status.locator('tr[data-param-name="request_id"] input').fill("no-such-request")
    with page.expect_response(lambda r: r.url.endswith("/fal-ai/photomaker/requests/no-such-request/status")) as info:
        status.locator(".execute").click()
    response = info.value
    assert response.request.headers.get("authorization") == f"Key {API_KEY}"
    assert response.status == 404
    shown = status.locator(".live-responses-table tbody .response-col_status").first
    shown.wait_for()
    assert "404" in shown.inner_text()
    page.screenshot(path=str(tmp_path / "docs-try-it-out.png"), full_page=False)


def test_redoc_is_not_offered(live_server):
    """FastAPI's ReDoc page would load from a CDN; it is disabled rather than left half-working."""
    with live_server.client(None) as client:
        assert client.get("/redoc").status_code == 404

"""The web page at ``/``, driven in a real Chromium the way a person uses it.

The page talks to the shared ``photomaker serve --tiny`` (random-weight model): it uploads the photos, submits to
the fal-style queue, follows the SSE status stream and shows the result. Every test opens the page in a fresh
browser context (empty localStorage, no cookies) with a fresh one-time login link, as the person at the server's
console opens it: the page exchanges the link's token for a session cookie and gets the server's local key with it.

Uses Debian's Chromium (``make test-deps`` installs it); Playwright's own browser downloads are never used.
Screenshots go to pytest's tmp_path only.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from helpers import make_face
from live_server import API_KEY, APP

pytestmark = pytest.mark.browser

STYLES = [
    "(No style)", "Cinematic", "Disney Character", "Digital Art", "Photographic", "Fantasy art",
    "Neonpunk", "Enhance", "Comic book", "Lowpoly", "Line art",
]
PROMPT = "a photo of a man img, film grain"

# Records every text #progress-text shows, so that short-lived states ("Step 2/4", "In queue, position 0")
# can be checked after the fact instead of racing them.
RECORD_PROGRESS = """
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const node = document.getElementById("progress-text");
  const box = document.getElementById("progress");
  new MutationObserver(() => {
    const text = node.textContent;
    if (!box.hidden && text && window.__progress[window.__progress.length - 1] !== text) window.__progress.push(text);
  }).observe(node, { childList: true, characterData: true, subtree: true });
});
"""


@pytest.fixture
def page(browser, live_server):
    """A fresh context (no saved key, no recent requests) with the page opened and its settings loaded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True,
                                  color_scheme="light")
    context.set_default_timeout(20_000)
    context.add_init_script(RECORD_PROGRESS)
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    page.goto(live_server.login_link())
    # /health fills the banner and /api/session (after the link's sign-in) the key field; both load asynchronously.
    page.wait_for_selector("#demo-banner:not([hidden])")
    page.wait_for_function("document.querySelector('#api-key').value !== ''")
    yield page
    context.close()
    assert not page_errors, f"uncaught errors in the page: {page_errors}"


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"face-{seed}.png"
        make_face(seed).save(path)
        paths.append(path)
    return paths


def progress_history(page) -> list[str]:
    return page.evaluate("window.__progress.slice()")


def job_count(live_server) -> int:
    """Requests the server has in its store (queued + running + finished), from /metrics."""
    text = httpx.get(f"{live_server.url}/metrics", timeout=10).text
    total = 0
    for line in text.splitlines():
        if re.match(r"photomaker_(queue_depth|jobs_running|jobs_finished)[ {]", line):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def image_in_view(page, timeout: float = 10_000) -> None:
    """Waits until the first result image is fully loaded and at least half on screen (the page scrolls smoothly)."""
    page.wait_for_function("""() => {
      const img = document.querySelector('#gallery img.result-image');
      if (!img || !img.complete || img.naturalWidth === 0) return false;
      const r = img.getBoundingClientRect();
      const visible = Math.min(r.bottom, innerHeight) - Math.max(r.top, 0);
      return r.height > 0 && visible >= r.height / 2;
    }""", timeout=timeout)


def assert_result_card_at_the_top(page) -> None:
    """At 1280x900 the two panels sit side by side, both starting at the same height, and the Result card is
    on screen from its heading down to its first image: no empty gap above it, whatever part of the form is
    scrolled into view (the form scrolls inside its own panel on a wide window)."""
    boxes = page.evaluate("""() => {
      const box = (selector) => { const r = document.querySelector(selector).getBoundingClientRect();
                                  return {top: r.top, bottom: r.bottom, left: r.left, height: r.height}; };
      return {form: box('#form'), output: box('.output'), title: box('#output-title'),
              image: box('#gallery img.result-image'), scrollY: window.scrollY, innerHeight: window.innerHeight,
              pageHeight: document.documentElement.scrollHeight};
    }""")
    form, output, title, image = boxes["form"], boxes["output"], boxes["title"], boxes["image"]
    assert output["left"] > form["left"], boxes  # side by side
    assert abs(output["top"] - form["top"]) <= 2, boxes
    # The heading is at the top of the card (the card is not scrolled), the whole image is inside the card.
    assert output["top"] < title["top"] < output["top"] + 60, boxes
    assert title["top"] < image["top"] and image["bottom"] <= min(output["bottom"], boxes["innerHeight"]), boxes
    # The page itself fits the window: a full-page screenshot is what a person sees.
    assert boxes["scrollY"] == 0 and boxes["pageHeight"] <= boxes["innerHeight"] + 1, boxes


def fill_request(page, photos: list[Path], prompt: str, *, steps: int, size: str = "square") -> None:
    page.set_input_files("#photos", [str(p) for p in photos])
    page.wait_for_function(f"document.querySelectorAll('#thumbs .thumb img').length === {len(photos)}")
    page.fill("#prompt", prompt)
    page.click("#advanced summary")
    assert page.is_visible("#steps")
    page.fill("#steps", str(steps))
    page.select_option("#image-size", size)


def test_page_opens_with_demo_banner_local_key_and_styles(page, live_server, tmp_path):
    banner = page.locator("#demo-banner")
    assert banner.is_visible()
    text = banner.inner_text().lower()
    assert "random-weight" in text and "demo" in text, text
    assert "resemble no one" in text, "the server's own demo_warning text is shown"
    # On the demo model the page starts with quick settings (full-size defaults would take minutes on a CPU).
    assert page.input_value("#steps") == "20" and page.input_value("#image-size") == "square"
    # They stay quick when an initial image comes and goes (elsewhere: "Auto", then square HD, full size).
    initial = tmp_path / "initial.png"
    make_face(5).save(initial)
    page.set_input_files("#initial-image", str(initial))
    assert page.input_value("#image-size") == "square"
    page.set_input_files("#initial-image", [])
    assert page.input_value("#image-size") == "square"

    # Opened with the login link: the key comes from the session (the server's local key) and says so; the token
    # is gone from the address bar.
    assert page.input_value("#api-key") == API_KEY
    assert page.get_attribute("#api-key", "type") == "password"
    assert "login link" in page.inner_text("#api-key-note")
    assert "token" not in page.url and page.url.rstrip("/") == live_server.url

    # Styles come from /health; the picker lists the 11 styles with the server's default chosen.
    assert page.eval_on_selector_all("#style option", "os => os.map(o => o.value)") == STYLES
    assert page.input_value("#style") == "Photographic"
    assert page.is_visible("#generate") and page.is_enabled("#generate")
    assert page.is_hidden("#cancel")
    assert "No requests from this browser yet" in page.inner_text("#recent")
    page.screenshot(path=str(tmp_path / "opened.png"), full_page=True)


def test_generate_shows_progress_images_seed_and_recent(page, live_server, photos, tmp_path):
    fill_request(page, photos, PROMPT, steps=4, size="square")
    # The live prompt check agrees before anything is sent.
    assert "Trigger word found" in page.inner_text("#prompt-hint")

    page.click("#generate")
    # While it runs: the button says so and Cancel is offered.
    page.wait_for_selector("#cancel:not([hidden])", timeout=5_000)
    page.wait_for_selector("#gallery img.result-image", timeout=60_000)
    page.wait_for_selector("#generate:not([disabled])")

    history = progress_history(page)
    assert any(re.fullmatch(r"Step [1-4]/4", t) or t.startswith("In queue, position") for t in history), history
    assert any(t.startswith("Uploading") for t in history), history
    assert re.match(r"Done( in [\d.]+ s)?$", page.inner_text("#progress-text")), history
    assert page.is_hidden("#cancel")

    # Logs of the request were followed live.
    assert page.is_visible("#logs-box")
    assert "Step 4/4" in page.inner_text("#logs")

    # The image(s): loaded for real, each with a download link.
    images = page.locator("#gallery img.result-image")
    assert images.count() == 1
    page.wait_for_function(
        "[...document.querySelectorAll('#gallery img.result-image')].every(i => i.complete && i.naturalWidth > 0)")
    assert images.first.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [512, 512]
    image_in_view(page)
    figures = page.locator("#gallery figure.result")
    for i in range(figures.count()):
        link = figures.nth(i).locator("a.download")
        assert link.is_visible() and link.get_attribute("download")
        assert link.get_attribute("href") == figures.nth(i).locator("img.result-image").get_attribute("src")

    # The download link gives the PNG itself.
    with page.expect_download() as download_info:
        figures.first.locator("a.download").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".png")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert Image.open(io.BytesIO(saved.read_bytes())).size == (512, 512)

    # The seed line agrees with what the server returned for this request.
    request_id = page.inner_text("#request-id").strip()
    assert request_id
    with live_server.client() as api:
        result = api.get(f"/{APP}/requests/{request_id}").json()
    seed_text = " ".join(page.text_content("#result-seed").split())
    assert page.is_visible("#result-seed")
    assert re.search(rf"\bSeed {result['seed']}\b", seed_text), seed_text
    assert f"seed {result['seed']}" in page.inner_text("#gallery figcaption")
    assert result["images"][0]["url"] == images.first.get_attribute("src")

    # "Use this seed" copies it into the form.
    page.click("#result-seed button")
    assert page.input_value("#seed") == str(result["seed"])

    # The recent-requests list has it, marked done; it survives a reload (kept in this browser).
    entry = page.locator(f"#recent .recent-item[data-id='{request_id}']")
    assert entry.is_visible()
    assert PROMPT in entry.inner_text() and "done" in entry.locator(".badge").inner_text()
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)
    assert_result_card_at_the_top(page)

    # On a phone, after a reload: the entry is still there and reopens the result, scrolled into view (the
    # result panel sits below the long form there).
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_selector("#demo-banner:not([hidden])")
    entry = page.locator(f"#recent .recent-item[data-id='{request_id}']")
    assert "done" in entry.inner_text()
    entry.click()
    page.wait_for_selector("#gallery img.result-image")
    assert page.locator("#gallery img.result-image").first.get_attribute("src") == result["images"][0]["url"]
    image_in_view(page)
    page.screenshot(path=str(tmp_path / "phone-reopened.png"))


def test_on_a_phone_the_finished_image_is_scrolled_into_view(page, photos, tmp_path):
    """On a narrow screen the result panel sits below the long form: when the images arrive the page brings them
    on screen instead of leaving the person looking at the Generate button or the logs."""
    page.set_viewport_size({"width": 390, "height": 844})
    fill_request(page, photos[:1], PROMPT, steps=2, size="square")
    page.click("#generate")
    page.wait_for_selector("#gallery img.result-image", timeout=60_000)
    image_in_view(page)
    page.screenshot(path=str(tmp_path / "phone-done.png"))


def test_prompt_without_trigger_word_shows_the_server_message_inline(page, live_server, photos, tmp_path):
    fill_request(page, photos[:1], "a photo of a man", steps=4)
    # The page warns while typing...
    assert "No trigger word yet" in page.inner_text("#prompt-hint")

    submits: list[int] = []
    page.on("response", lambda r: submits.append(r.status)
            if r.request.method == "POST" and r.url.rstrip("/").endswith(APP) else None)
    before = job_count(live_server)
    page.click("#generate")  # ...but leaves the decision to the server.

    error = page.locator("[data-field='prompt'] .field-error")
    error.wait_for(state="visible", timeout=20_000)
    message = error.inner_text()
    assert "img" in message and "trigger word" in message, message
    assert page.get_attribute("#prompt", "aria-invalid") == "true"
    assert error.get_attribute("id") in (page.get_attribute("#prompt", "aria-describedby") or "").split()
    assert page.is_visible("#error")
    assert "next to the fields" in page.inner_text("#error")

    # No request was created: the submit was refused and nothing was queued or remembered.
    assert submits == [422]
    assert job_count(live_server) == before
    assert page.is_hidden("#progress")
    assert page.inner_text("#request-id") == ""
    assert page.locator("#recent .recent-item").count() == 0
    assert page.is_enabled("#generate") and page.is_hidden("#cancel")
    page.screenshot(path=str(tmp_path / "prompt-error.png"), full_page=True)

    # Editing the prompt clears the stale message.
    page.fill("#prompt", PROMPT)
    assert page.locator("[data-field='prompt'] .field-error").count() == 0


def test_cancel_a_running_generation(page, live_server, photos, tmp_path):
    fill_request(page, photos[:1], PROMPT, steps=100, size="square")  # over a minute on the tiny model
    page.click("#generate")

    # Cancel once it is really running (a step reported), the harder case for the server.
    page.wait_for_function("/^Step \\d+\\/100$/.test(document.querySelector('#progress-text').textContent)",
                           timeout=60_000)
    request_id = page.inner_text("#request-id").strip()
    assert request_id
    started = time.monotonic()
    page.click("#cancel")
    assert page.is_disabled("#cancel")

    page.wait_for_function("document.querySelector('#progress-text').textContent === 'Cancelled'", timeout=30_000)
    assert time.monotonic() - started < 20  # the worker stops between steps, not after all 100
    assert "Cancelling…" in progress_history(page)
    assert page.is_enabled("#generate") and page.inner_text("#generate") == "Generate"
    assert page.is_hidden("#cancel")
    assert page.locator("#gallery img.result-image").count() == 0
    assert page.is_hidden("#error")  # a cancel the user asked for is not shown as an error
    entry = page.locator(f"#recent .recent-item[data-id='{request_id}']")
    assert "cancelled" in entry.locator(".badge").inner_text()
    page.screenshot(path=str(tmp_path / "cancelled.png"), full_page=True)

    # The server agrees: the request ended as cancelled, not completed.
    with live_server.client() as api:
        status = api.get(f"/{APP}/requests/{request_id}/status").json()
        assert status["status"] == "COMPLETED"
        result = api.get(f"/{APP}/requests/{request_id}")
    assert result.status_code >= 400 and "cancel" in result.text.lower(), result.text


def test_the_key_needs_the_login_link_which_works_once(browser, live_server):
    """Without the link the page has no key, even opened from 127.0.0.1; the link printed at start-up signs one
    browser in (and it stays signed in on a reload); the same link in another browser gets nothing."""
    link = live_server.printed_login_link()
    contexts = [browser.new_context() for _ in range(3)]
    try:
        plain, first, second = (context.new_page() for context in contexts)
        plain.goto(f"{live_server.url}/")
        plain.wait_for_selector("#demo-banner:not([hidden])")
        plain.wait_for_timeout(500)  # the session check has answered (401) by now
        assert plain.input_value("#api-key") == ""

        first.goto(link)
        first.wait_for_function("document.querySelector('#api-key').value !== ''")
        assert first.input_value("#api-key") == API_KEY
        cookie = next(c for c in contexts[1].cookies() if c["name"] == "photomaker_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and API_KEY not in cookie["value"]
        first.reload()
        first.wait_for_function("document.querySelector('#api-key').value !== ''")

        second.goto(link)  # used already
        second.wait_for_selector("#demo-banner:not([hidden])")
        second.wait_for_timeout(500)
        assert second.input_value("#api-key") == "" and "token" not in second.url
    finally:
        for context in contexts:
            context.close()


def test_the_version_selector_sends_photomaker_v2(page, photos):
    """The PhotoMaker version selector starts at the server's default (v1) and its choice reaches the request."""
    assert page.input_value("#photomaker-version") == "v1"
    fill_request(page, photos[:1], PROMPT, steps=2)
    page.select_option("#photomaker-version", "v2")
    page.click("#generate")
    page.wait_for_selector("#gallery img.result-image", timeout=60_000)
    assert "(PhotoMaker v2)" in page.inner_text("#logs")

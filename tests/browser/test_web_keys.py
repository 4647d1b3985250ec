"""The web page shows which key it uses: its name and limits (``/api/key``), and says so when a key is refused.

Against the shared ``photomaker serve --tiny``; the managed key is made with ``photomaker keys`` on its data dir.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.browser


def keys_cli(live_server, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "photomaker_server.cli", "keys", *args, "--data-dir",
                           str(live_server.data_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_the_page_shows_the_keys_name_and_limits(browser, live_server) -> None:
    context = browser.new_context()
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        page.goto(live_server.login_link())  # signed in with the local key, as the person at the console is
        # The local key (a configured key): its stable name, no limits.
        page.wait_for_function("/config-\\d+/.test(document.querySelector('#key-info').textContent)")
        assert "no limits" in page.locator("#key-info").text_content()

        secret = keys_cli(live_server, "create", "web-app", "--max-queued", "5", "--max-concurrent", "2")
        page.fill("#api-key", secret)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.querySelector('#key-info').textContent.includes('web-app')")
        text = page.locator("#key-info").text_content()
        assert "2 running at once" in text and "5 waiting" in text and secret not in text

        keys_cli(live_server, "revoke", "web-app")
        page.wait_for_timeout(300)  # the server's key cache follows the revocation within milliseconds
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.querySelector('#key-info').textContent.includes('not accepted')")
    finally:
        context.close()

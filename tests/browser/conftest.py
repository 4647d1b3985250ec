"""One Chromium for the browser tests: Debian's (``make test-deps`` installs it); Playwright's own browser downloads
are never used."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    import playwright.sync_api as sync_api
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}; `make test-deps` installs Debian's chromium")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()

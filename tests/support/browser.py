"""Headless Chromium (Debian's package) driven by Playwright, for the HTML pages raydund writes.

``page_of(path)`` opens a local HTML file and collects every console error, failed
request and uncaught page error, so a test can assert the page rendered cleanly.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# the machine's network is closed: keep Chromium from calling home
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def page_of(path: str | Path):
    """Yield ``(page, problems)``: a loaded Playwright page and the list of errors it raised."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"headless Chromium not found at {CHROMIUM}; `make test` installs Debian's chromium")
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(Path(path).resolve().as_uri(), wait_until="load")
            yield page, problems
        finally:
            browser.close()

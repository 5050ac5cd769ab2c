"""A real headless Chromium for page tests: the system's browser (Debian's ``chromium``) driven
by Playwright, nothing downloaded at test time. Every request the page makes is recorded, and
any that would leave loopback is refused before it goes out (and reported by the test)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    """The system Chromium, or a skip saying how to get it (CI installs it: .ci/run)."""
    for name in (os.environ.get("SERVEWELL_TEST_CHROMIUM", ""), *CANDIDATES):
        found = shutil.which(name) if name else None
        if found:
            return found
    pytest.skip("no Chromium on this machine: `apt-get install chromium` (CI installs it)")


@dataclass
class Visit:
    """What one page did: every request, the ones that left loopback, console errors."""

    page: Any
    requests: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname in LOOPBACK


@contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator[Visit]:
    """A fresh page in a fresh headless Chromium."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        # --no-sandbox: the tests may run as root (CI containers), where the sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            visit = Visit(page)

            def route(route: Any) -> None:
                url = route.request.url
                visit.requests.append(url)
                if _local(url):
                    route.continue_()
                else:
                    visit.outside.append(url)
                    route.abort()

            page.route("**/*", route)
            page.on(
                "console",
                lambda m: visit.console_errors.append(m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: visit.page_errors.append(str(e)))
            yield visit
        finally:
            browser.close()

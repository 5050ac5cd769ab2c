"""The API docs in a real headless Chromium: they render, log no error, and make no request
outside loopback (Swagger UI's default validator badge would call an outside host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.browser import browser_page
from tests.serving.conftest import RunningServer

pytestmark = pytest.mark.browser

RENDERED = {"/docs": ".swagger-ui .info .title", "/redoc": "redoc h1"}


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_render_offline_without_errors(
    server: RunningServer, tmp_path: Path, path: str
) -> None:
    with browser_page() as visit:
        page = visit.page
        page.goto(server.url + path, wait_until="networkidle")
        page.wait_for_selector(RENDERED[path], timeout=30_000)
        assert "servewell" in page.inner_text(RENDERED[path])
        if path == "/docs":  # every model's typed operation is listed
            page.wait_for_selector('[data-path="/models/iris/predict"]')
        page.screenshot(path=str(tmp_path / f"{path.strip('/')}.png"), full_page=False)
        assert visit.outside == []
        assert visit.console_errors == []
        assert visit.page_errors == []
        assert any(url.endswith("/openapi.json") for url in visit.requests)

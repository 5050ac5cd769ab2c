"""The API docs work offline: pages and assets come from the server, never from a CDN."""

from __future__ import annotations

import re

import httpx
import pytest

EXTERNAL = re.compile(r"""(?:src|href|url)\s*[=:(]\s*['"]?(?:https?:)?//""", re.IGNORECASE)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_and_assets_are_local(client: httpx.Client, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"https?://", html), "the page references an external host"
    assert not EXTERNAL.search(html)
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets, "expected script and style references"
    for asset in assets:
        assert asset.startswith("/"), asset
        loaded = client.get(asset)
        assert loaded.status_code == 200, asset
        assert len(loaded.content) > 0
    assert "/openapi.json" in html
    assert client.get("/openapi.json").status_code == 200

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


def test_the_root_points_browsers_to_the_docs_and_clients_to_the_links(
    client: httpx.Client,
) -> None:
    browser = client.get("/", headers={"accept": "text/html,application/xhtml+xml"})
    assert browser.status_code == 307
    assert browser.headers["location"] == "/ui"
    links = client.get("/")
    assert links.status_code == 200
    body = links.json()
    assert body["docs"] == "/docs"
    for link in (
        "ui",
        "overview",
        "docs",
        "openapi",
        "models",
        "health",
        "open_inference_protocol",
    ):
        assert client.get(body[link]).status_code == 200, link

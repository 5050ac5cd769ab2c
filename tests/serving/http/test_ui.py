"""The web UI and the overview it renders, against the live server (real pool and models,
capture in SQLite), in a real headless Chromium: every model's card, a clear mark when live
quality is degraded, no console error, no request outside loopback, usable at a phone width."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.store import ModelStore
from tests.serving.browser import browser_page
from tests.serving.conftest import IRIS_ROW, RunningServer, running_server
from tests.serving.http.test_quality import _predict_and_label, quality_settings

pytestmark = pytest.mark.browser

MODELS = ["breast_cancer", "churn", "diabetes", "iris"]


@pytest.fixture(scope="module")
def live(
    trained_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with running_server(quality_settings(trained_store, tmp_path_factory)) as running:
        yield running


def overview(client: httpx.Client) -> dict[str, Any]:
    answer = client.get("/overview")
    assert answer.status_code == 200, answer.text
    models: list[dict[str, Any]] = answer.json()["models"]
    return {m["name"]: m for m in models}


def wait_for_recent(client: httpx.Client, model: str, requests: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        entry: dict[str, Any] = overview(client)[model]
        recent = entry["recent"]
        if recent["available"] and recent["versions"]["1"]["requests"] >= requests:
            return entry
        assert time.monotonic() < deadline, recent
        time.sleep(0.2)


def test_the_overview_says_what_serves_and_how_it_goes(live: RunningServer) -> None:
    with live.client() as client:
        for _ in range(30):
            assert (
                client.post("/models/diabetes/predict", json={"rows": [[0.0] * 10]}).status_code
                == 200
            )
        entry = wait_for_recent(client, "diabetes", 30)
        models = overview(client)
    assert sorted(models) == MODELS
    assert entry["production_version"] == 1
    assert entry["runtime"] in ("onnx", "sklearn")
    assert entry["traffic"] == {"mode": "production"}
    figures = entry["recent"]["versions"]["1"]
    assert figures["error_rate"] == 0.0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert entry["drift"]["status"] == "too_few_rows"
    assert entry["quality"]["status"] == "not_enough_rows"
    assert entry["holdout"] == pytest.approx(entry["quality"]["holdout"])


def test_the_ui_shows_every_model_and_marks_a_degraded_one(
    live: RunningServer, tmp_path: Path
) -> None:
    with live.client() as client:
        _predict_and_label(client, "ui-calm", 0.0)
        _predict_and_label(client, "ui-shifted", 3.0)  # petals 3 cm longer: all look virginica
        deadline = time.monotonic() + 10
        while not overview(client)["iris"]["degraded"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        iris = overview(client)["iris"]
        deadline = time.monotonic() + 15  # drift is taken every 10 s: wait for the shifted rows
        while not any(p["rows"] for p in client.get("/models/iris/drift/history").json()["points"]):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert iris["drift"]["status"] == "significant"
    with browser_page() as visit:
        page = visit.page
        page.goto(live.url + "/ui?refresh=0", wait_until="networkidle")
        for model in MODELS:
            assert page.locator(f'section[data-model="{model}"]').is_visible()
        card = page.locator('section[data-model="iris"]')
        assert "degraded" in (card.get_attribute("class") or "")
        assert card.locator(".mark.bad").inner_text() == "degraded"
        assert card.locator(".drift.significant").is_visible()
        page.goto(f"{live.url}/ui/models/iris", wait_until="networkidle")
        charts = page.locator("svg.chart")
        assert charts.count() == 2  # drift over the last hour, live quality over the day
        for i in range(2):
            box = charts.nth(i).bounding_box()
            assert box is not None
            assert box["width"] > 200
            assert box["height"] > 50
        quality = charts.nth(1)
        assert quality.locator("circle, polyline").count() >= 1  # the shifted rows' slice
        assert quality.locator("line.reference").count() == 1  # the holdout
        page.screenshot(path=str(tmp_path / "iris.png"), full_page=True)
        page.goto(live.url + "/ui?refresh=0", wait_until="networkidle")
        healthy = page.locator('section[data-model="diabetes"]')
        assert "degraded" not in (healthy.get_attribute("class") or "")
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
        assert visit.outside == []
        assert visit.console_errors == []
        assert visit.page_errors == []


def test_the_ui_fits_a_phone(live: RunningServer, tmp_path: Path) -> None:
    with live.client() as client:
        assert client.post("/models/iris/predict", json={"rows": [IRIS_ROW]}).status_code == 200
    with browser_page(width=390, height=844) as visit:
        page = visit.page
        page.goto(live.url + "/ui?refresh=0", wait_until="networkidle")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        for model in MODELS:
            box = page.locator(f'section[data-model="{model}"]').bounding_box()
            assert box is not None
            assert box["width"] > 300
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= 390
        page.screenshot(path=str(tmp_path / "overview-phone.png"), full_page=True)
        assert visit.console_errors == []
        assert visit.outside == []


def test_the_root_sends_a_browser_to_the_ui(live: RunningServer) -> None:
    with browser_page() as visit:
        visit.page.goto(live.url + "/", wait_until="networkidle")
        assert visit.page.url == live.url + "/ui"
        assert visit.page.locator("h1").inner_text() == "Models"


@pytest.mark.parametrize("model", MODELS)
def test_a_model_page_shows_its_card_plots_features_and_versions(
    live: RunningServer, trained_store: ModelStore, tmp_path: Path, model: str
) -> None:
    manifest = trained_store.manifest(model, 1)
    plots = sorted(f for f in manifest.files if f.startswith("report/") and f.endswith(".png"))
    with browser_page() as visit:
        page = visit.page
        page.goto(f"{live.url}/ui/models/{model}", wait_until="networkidle")
        page.wait_for_load_state("load")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth,"
            " i.getBoundingClientRect().width])"
        )
        shown = sorted("report/" + src.rsplit("/", 1)[-1] for src, _, _ in images)
        assert shown == plots
        for src, natural, width in images:
            assert natural > 0, src
            assert width > 0, src
        assert page.locator("#features + .scroll tbody tr").count() == len(manifest.features)
        assert page.locator("#versions + .scroll tbody tr").count() == 1
        assert "Model card" in page.locator("article.model-card h1").inner_text()
        page.screenshot(path=str(tmp_path / f"{model}.png"), full_page=True)
        assert visit.outside == []
        assert visit.console_errors == []
        assert visit.page_errors == []
    with browser_page(width=390, height=844) as visit:
        visit.page.goto(f"{live.url}/ui/models/{model}", wait_until="networkidle")
        assert visit.page.evaluate("document.documentElement.scrollWidth") <= 390
        assert visit.console_errors == []


def test_an_unknown_model_page_is_a_404(live: RunningServer) -> None:
    with live.client() as client:
        answer = client.get("/ui/models/nope")
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "model_not_found"


def test_a_model_that_failed_to_load_is_shown_failed(tampered_server: RunningServer) -> None:
    """diabetes's model file changed after training: it is not served; the UI says so."""
    with tampered_server.client() as client:
        models = overview(client)
        assert models["diabetes"]["state"] == "failed"
        assert models["diabetes"]["error"]
        assert models["iris"]["state"] == "ready"
        page = client.get("/ui/models/diabetes")
        assert page.status_code in (200, 503), page.text  # never a 500
    with browser_page() as visit:
        visit.page.goto(tampered_server.url + "/ui?refresh=0", wait_until="networkidle")
        card = visit.page.locator('section[data-model="diabetes"]')
        assert "failed" in (card.get_attribute("class") or "")
        assert card.locator(".error").inner_text()
        assert visit.console_errors == []

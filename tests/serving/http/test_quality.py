"""Live quality through the live server: labels for predictions on the training distribution
keep a version healthy; the same labels for shifted inputs make it degraded."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sklearn.datasets import load_iris

from serving.settings import Settings
from serving.store import ModelStore
from tests.serving.conftest import RunningServer, quiet_settings, running_server


@pytest.fixture(scope="module")
def quality_server(
    trained_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with running_server(quality_settings(trained_store, tmp_path_factory)) as running:
        yield running


def quality_settings(store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Capture into a new SQLite file, and live quality judged on few rows, often."""
    url = f"sqlite:///{tmp_path_factory.mktemp('quality') / 'capture.sqlite'}"
    return quiet_settings(
        store,
        pool_size=1,
        capture="all",
        capture_url=url,
        quality_last_n=60,
        quality_min_rows=30,
        quality_tolerance=0.1,
        quality_interval_s=0.2,
    )


def _predict_and_label(client: httpx.Client, prefix: str, shift: float) -> None:
    """Every iris row (petal lengths shifted by ``shift`` cm), then its true species."""
    data = load_iris()
    rows = data.data.copy()
    rows[:, 2] += shift
    names = [str(data.target_names[t]) for t in data.target]
    request_id = f"{prefix}-batch"
    response = client.post(
        "/models/iris/predict",
        json={"rows": rows.tolist(), "return_probabilities": True},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 200
    items = [{"request_id": request_id, "row": i, "label": n} for i, n in enumerate(names)]
    for start in range(0, len(items), 100):
        answer = client.post("/models/iris/feedback", json=items[start : start + 100])
        assert answer.json()["joined"] == len(items[start : start + 100])


def test_live_quality_falls_when_the_inputs_shift(
    quality_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with quality_server.client() as client:
        before = client.get("/models/iris/quality").json()
        assert before["versions"][0]["status"] == "not_enough_rows"

        _predict_and_label(client, "calm", 0.0)
        healthy = client.get("/models/iris/quality").json()["versions"][0]
        assert healthy["status"] == "ok"
        assert healthy["live"] > 0.8
        assert healthy["windows"]["last_n"]["rows"] == 60
        assert healthy["windows"]["1h"]["rows"] == 150
        assert healthy["windows"]["1h"]["metrics"]["accuracy"] > 0.9

        with caplog.at_level(logging.WARNING, logger="servewell.capture"):
            _predict_and_label(client, "shifted", 3.0)  # petals 3 cm longer: all look virginica
            shifted = client.get("/models/iris/quality").json()["versions"][0]
        assert shifted["degraded"] is True
        assert shifted["status"] == "degraded"
        assert shifted["live"] < healthy["live"] - 0.1
        assert shifted["holdout"] == healthy["holdout"]
        assert "worse than holdout" in shifted["reason"]
        degraded_lines = [r for r in caplog.records if "is degraded" in r.getMessage()]
        assert len(degraded_lines) == 1  # logged once, not per computation

        scrape = client.get("/metrics").text
        assert 'servewell_live_degraded{model="iris",version="1"} 1.0' in scrape
        assert 'servewell_live_labelled_rows{model="iris",version="1",window="1h"} 300.0' in scrape


def test_quality_needs_capture(client: httpx.Client) -> None:
    response = client.get("/models/iris/quality")
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "capture_off"


def test_quality_of_an_unknown_model_is_404(quality_server: RunningServer, tmp_path: Path) -> None:
    with quality_server.client() as client:
        assert client.get("/models/nope/quality").status_code == 404
        assert client.get("/models/iris/quality?version=9").status_code == 404

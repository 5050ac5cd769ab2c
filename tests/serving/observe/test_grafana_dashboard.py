"""The Grafana dashboard under docs/ queries only metrics, and labels, that the live service's
/metrics exposes (capture on, so every family is listed)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, quiet_settings, running_server

DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana" / "servewell-dashboard.json"
_SELECTOR = re.compile(r"(servewell_[a-z_]+)(\{[^}]*\})?")
_GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")
_LABEL = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")


def expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = [t["expr"] for panel in document["panels"] for t in panel["targets"]]
    out += [v["definition"] for v in document["templating"]["list"] if "definition" in v]
    return out


@pytest.fixture(scope="module")
def scrape(trained_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('grafana') / 'capture.sqlite'}"
    settings = quiet_settings(trained_store, pool_size=1, capture="all", capture_url=url)
    with running_server(settings) as running, running.client() as client:
        assert client.post("/models/iris/predict", json={"rows": [IRIS_ROW]}).status_code == 200
        yield client.get("/metrics").text


def exposed(scrape: str) -> dict[str, set[str]]:
    """Every sample name /metrics lists (a histogram's three series), with its labels as the
    family defines them (a family without samples yet, e.g. live quality before any feedback,
    is listed by its TYPE line alone)."""
    from serving.observe.families import DEFINITIONS

    listed = {
        line.split()[2]: line.split()[3]
        for line in scrape.splitlines()
        if line.startswith("# TYPE ")
    }
    names: dict[str, set[str]] = {}
    for definition in DEFINITIONS:
        labels = set(definition.labels)
        if definition.kind == "counter":
            names[definition.name + "_total"] = labels
        elif definition.kind == "histogram":
            names |= {definition.name + s: labels for s in ("_sum", "_count")}
            names[definition.name + "_bucket"] = labels | {"le"}
        else:
            names[definition.name] = labels
    typed = {
        n + s
        for n, kind in listed.items()
        for s in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))
    }
    return {name: labels for name, labels in names.items() if name in typed}


def problems(expr: str, names: dict[str, set[str]]) -> list[str]:
    """What in one query names a metric or a label /metrics does not have."""
    found: list[str] = []
    used: set[str] = set()
    for name, selector in _SELECTOR.findall(expr):
        if name not in names:
            found.append(f"{name} is not in /metrics")
            continue
        used |= names[name]
        found += [
            f"{name} has no label {label!r}"
            for label in _LABEL.findall(selector)
            if label not in names[name]
        ]
    for group in _GROUPING.findall(expr):
        for label in (part.strip() for part in group.split(",") if part.strip()):
            if label not in used | {"le"}:
                found.append(f"no metric of the query has the label {label!r}")
    return found


def test_the_dashboard_is_valid_grafana_json() -> None:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert document["uid"] == "servewell"
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in document["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"


def test_every_metric_and_label_it_queries_exists(scrape: str) -> None:
    names = exposed(scrape)
    assert "servewell_requests_total" in names
    for expr in expressions():
        assert problems(expr, names) == [], expr
    # And every family is on the dashboard.
    queried = {name for expr in expressions() for name, _ in _SELECTOR.findall(expr)}
    stems = {re.sub(r"_(bucket|sum|count)$", "", n) for n in queried}
    assert {re.sub(r"_(bucket|sum|count)$", "", n) for n in names} <= stems


def test_a_wrong_name_or_label_is_caught(scrape: str) -> None:
    names = exposed(scrape)
    assert problems("rate(servewell_requests[1m])", names) == [
        "servewell_requests is not in /metrics"
    ]
    assert problems('servewell_model_info{modle="iris"}', names) == [
        "servewell_model_info has no label 'modle'"
    ]
    assert problems("sum by (runtime) (servewell_requests_total)", names) == [
        "no metric of the query has the label 'runtime'"
    ]

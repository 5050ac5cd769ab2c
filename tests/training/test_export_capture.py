"""Exporting captured predictions and labels: one CSV row per captured prediction."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
from sqlalchemy import text

from serving.capture.database import open_engine
from serving.store import ModelStore
from tests.serving.capture.conftest import postgres_url  # noqa: F401 (a fixture)
from tests.training.conftest import quiet
from tests.training.traffic import ROTATE, START, iris_rows, write_iris_traffic
from training.capture_data import iso
from training.errors import ExportError
from training.export_capture import export_capture
from training.run import train
from training.spec import shipped_spec

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
CLASSES = ["setosa", "versicolor", "virginica"]


@pytest.fixture
def iris(store: ModelStore) -> ModelStore:
    train(shipped_spec("iris"), store, echo=quiet)
    return store


def _check_export(iris: ModelStore, url: str, out: Path) -> None:
    write_iris_traffic(iris, url, labelled=10, unlabelled=5, per_request=3)
    summary = export_capture(iris, "iris", url, out, chunk_rows=4)  # several chunks
    assert (summary.rows, summary.labelled, summary.dropped_inputs) == (15, 10, 0)
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == [
        "request_id",
        "row",
        "version",
        "ts",
        "transport",
        "latency_ms",
        *FEATURES,
        "prediction",
        *(f"probability_{c}" for c in CLASSES),
        "label",
        "labelled_at",
    ]
    body = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert len(body) == 15
    X, y = iris_rows()
    for i, r in enumerate(body):
        request = 3 * (i // 3)
        assert (r["request_id"], r["row"], r["version"]) == (f"req-{request}", str(i % 3), "1")
        assert r["ts"] == iso(START + request)
        assert r["ts"].endswith("+00:00")
        assert (r["transport"], r["latency_ms"]) == ("rest", "2.5")
        assert [float(r[f]) for f in FEATURES] == list(X[i])
        assert r["prediction"] == "setosa"
        assert float(r["probability_virginica"]) == pytest.approx(1 / 3)
        labelled = i < 10
        assert r["label"] == (ROTATE[y[i]] if labelled else "")
        assert r["labelled_at"] == (iso(START + 15 + 60) if labelled else "")
    assert not list(out.parent.glob(".*.partial"))


def test_export_csv(iris: ModelStore, tmp_path: Path) -> None:
    _check_export(iris, f"sqlite:///{tmp_path / 'capture.sqlite'}", tmp_path / "iris.csv")


@pytest.mark.postgres
def test_export_csv_from_postgresql(
    iris: ModelStore,
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
) -> None:
    admin = open_engine(postgres_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('DROP DATABASE IF EXISTS "export_capture"'))
        conn.execute(text('CREATE DATABASE "export_capture"'))
    admin.dispose()
    url = postgres_url.rsplit("/", 1)[0] + "/export_capture"
    _check_export(iris, url, tmp_path / "iris.csv")


def test_export_errors(iris: ModelStore, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'capture.sqlite'}"
    with pytest.raises(ExportError, match="no capture database at"):
        export_capture(iris, "iris", url, tmp_path / "out.csv")
    write_iris_traffic(iris, url, labelled=2)
    with pytest.raises(ExportError, match="no captured rows of 'churn'"):
        export_capture(iris, "churn", url, tmp_path / "out.csv")
    with pytest.raises(ExportError, match=r"\.csv or \.parquet, not 'out.json'"):
        export_capture(iris, "iris", url, tmp_path / "out.json")
    assert not (tmp_path / "out.csv").exists()
    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(ExportError, match="Parquet export needs pyarrow"):
            export_capture(iris, "iris", url, tmp_path / "out.parquet")


def test_export_parquet_holds_what_the_csv_holds(iris: ModelStore, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")  # a dev dependency: installed wherever the tests run
    url = f"sqlite:///{tmp_path / 'capture.sqlite'}"
    write_iris_traffic(iris, url, labelled=10, unlabelled=5, per_request=3)
    export_capture(iris, "iris", url, tmp_path / "iris.csv")
    summary = export_capture(iris, "iris", url, tmp_path / "iris.parquet", chunk_rows=4)
    assert (summary.rows, summary.labelled, summary.dropped_inputs) == (15, 10, 0)
    parquet = pd.read_parquet(tmp_path / "iris.parquet")
    csv_rows = pd.read_csv(tmp_path / "iris.csv", keep_default_na=False, dtype=str)
    assert list(parquet.columns) == list(csv_rows.columns)
    X, _ = iris_rows()
    assert parquet[FEATURES].to_numpy().tolist() == X[:15].tolist()  # numbers, not text
    assert parquet["request_id"].tolist() == csv_rows["request_id"].tolist()
    assert parquet["prediction"].tolist() == ["setosa"] * 15
    assert parquet["label"].tolist()[:10] == csv_rows["label"].tolist()[:10]
    assert parquet["label"][10:].isna().all()  # null, not ""
    assert not list(tmp_path.glob(".*.partial"))

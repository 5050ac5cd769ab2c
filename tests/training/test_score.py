"""Bulk CSV scoring: predictions equal the model's own, bad rows are described beside the output
rather than stopping the run, the service's validation rules hold, and memory stays bounded."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter, ValidationError

from serving.codecs.schemas import feature_type
from serving.store import Feature, FeatureKind, ModelStore
from tests.training.conftest import quiet
from training.csv_rows import encode_chunk
from training.datasets import load_dataset
from training.errors import ScoreError
from training.run import train
from training.score import errors_path, score_csv
from training.spec import shipped_spec


@pytest.fixture(scope="module")
def scored_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("score") / "store")
    for name in ("iris", "churn", "diabetes"):
        train(shipped_spec(name), store, echo=quiet)
    return store


def _training_frame(name: str) -> pd.DataFrame:
    return load_dataset(shipped_spec(name)).X


@pytest.mark.parametrize("prefer_onnx", [True, False])
@pytest.mark.parametrize("name", ["iris", "churn", "diabetes"])
def test_scored_csv_equals_in_process_predictions(
    scored_store: ModelStore, tmp_path: Path, name: str, prefer_onnx: bool
) -> None:
    X = _training_frame(name)
    data = tmp_path / "in.csv"
    # An extra column (e.g. an id) is ignored; columns may come in any order.
    X.iloc[:, ::-1].assign(customer_id=range(len(X))).to_csv(data, index=False)
    out = tmp_path / "out.csv"
    manifest, model = scored_store.load_model(name, 1)
    classifier = manifest.target.classes is not None

    # A chunk size that does not divide the row count: chunks join up without gaps.
    summary = score_csv(
        scored_store,
        name,
        data,
        out,
        probabilities=classifier,
        chunk_rows=37,
        prefer_onnx=prefer_onnx,
    )

    assert (summary.rows, summary.scored, summary.refused) == (len(X), len(X), 0)
    assert summary.runtime == ("onnx" if prefer_onnx else "sklearn")
    scored = pd.read_csv(out, keep_default_na=False)
    frame = X[manifest.feature_names]
    expected_input: Any = (
        frame if manifest.input_format == "dataframe" else frame.to_numpy(dtype=np.float64)
    )
    expected = model.predict(expected_input)
    if classifier:
        assert scored["row"].tolist() == list(range(1, len(X) + 1))
        assert scored["prediction"].astype(str).tolist() == [str(v) for v in expected]
        proba = model.predict_proba(expected_input)
        columns = [f"probability_{c}" for c in manifest.target.classes or []]
        np.testing.assert_allclose(scored[columns].to_numpy(), proba, atol=1e-6)
    else:
        np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=1e-9)
    assert pd.read_csv(errors_path(out)).empty


def test_bad_rows_go_to_the_side_file_and_good_rows_are_scored(
    scored_store: ModelStore, tmp_path: Path
) -> None:
    header = (
        "tenure_months,monthly_charges,support_calls,senior_citizen,contract,"
        "internet_service,payment_method"
    )
    lines = [
        "38,35.0,2,False,one-year,dsl,electronic-check",  # 1 good
        "39,102.13,2,True,three-year,fiber,mailed-check",  # 2 unseen category
        "1,28.3,4.5,false,one-year,none,credit-card",  # 3 fractional integer
        "66,,0,False,month-to-month,fiber,bank-transfer",  # 4 missing, not nullable
        "12,lots,1,maybe,one-year,dsl,credit-card",  # 5 text in a number and a boolean
        "12,inf,1,1,one-year,dsl,credit-card",  # 6 not finite
        "500,50.0,1,0,  two-year ,dsl,credit-card",  # 7 good: out of range, spaces stripped
    ]
    data = tmp_path / "in.csv"
    data.write_text(header + "\n" + "\n".join(lines) + "\n")
    out = tmp_path / "scored.csv"

    summary = score_csv(scored_store, "churn", data, out, chunk_rows=3)

    assert (summary.rows, summary.scored, summary.refused) == (7, 2, 5)
    assert summary.out_of_range == {"tenure_months": 1}
    errors = pd.read_csv(summary.errors)
    assert summary.errors == tmp_path / "scored.errors.csv"
    got = list(errors.itertuples(index=False, name=None))
    assert got == [
        (2, "contract", "category 'three-year' was not seen in training"),
        (3, "support_calls", "not a whole number"),
        (4, "monthly_charges", "missing value (not allowed: none in training)"),
        (5, "monthly_charges", "'lots' is not a number"),
        (5, "senior_citizen", "'maybe' is not a boolean"),
        (6, "monthly_charges", "not a finite number"),
    ]
    # One output line per input row, in input order: refused rows are left empty.
    scored = pd.read_csv(out, keep_default_na=False)
    assert scored["row"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    predicted = scored["prediction"].tolist()
    assert [i + 1 for i, v in enumerate(predicted) if v == ""] == [2, 3, 4, 5, 6]
    assert {predicted[0], predicted[6]} <= {"yes", "no"}


@pytest.mark.parametrize("chunk_rows", [1, 2, 50_000])
def test_a_line_with_too_many_fields_is_refused_in_its_place(
    scored_store: ModelStore, tmp_path: Path, chunk_rows: int
) -> None:
    row = "5.1,3.5,1.4,0.2"
    data = tmp_path / "in.csv"
    # Rows 2 and 5 have a stray field: their values may be shifted, so they are not scored.
    data.write_text(
        "sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm,id\n"
        f"{row},a\n{row},b,9\n{row},c\n{row},d\n{row},e,9\n"
    )
    out = tmp_path / "out.csv"

    summary = score_csv(scored_store, "iris", data, out, chunk_rows=chunk_rows)

    assert (summary.rows, summary.scored, summary.refused) == (5, 3, 2)
    scored = pd.read_csv(out, keep_default_na=False)
    assert scored["row"].tolist() == [1, 2, 3, 4, 5]
    assert [v == "" for v in scored["prediction"]] == [False, True, False, False, True]
    errors = pd.read_csv(summary.errors, keep_default_na=False)
    assert list(errors.itertuples(index=False, name=None)) == [
        (2, "", "row not read: expected 5 fields, saw 6"),
        (5, "", "row not read: expected 5 fields, saw 6"),
    ]


# CSV cell text and the JSON value the service would receive for it.
_CELLS: list[tuple[str, str, Any]] = [
    ("numeric", "1.5", 1.5),
    ("numeric", "inf", math.inf),
    ("numeric", "", None),
    ("integer", "49", 49),
    ("integer", "49.0", 49.0),
    ("integer", "49.5", 49.5),
    ("integer", str(2**53 + 2), 2**53 + 2),
    ("boolean", "true", True),
    ("boolean", "", None),
    ("categorical", "a", "a"),
    ("categorical", "c", "c"),
    ("categorical", "", None),
]


@pytest.mark.parametrize("nullable", [False, True])
@pytest.mark.parametrize(("kind", "cell", "json_value"), _CELLS)
def test_csv_checks_refuse_what_the_service_refuses(
    tmp_path: Path, kind: str, cell: str, json_value: Any, nullable: bool
) -> None:
    feature_kind = FeatureKind(kind)
    categorical = feature_kind == FeatureKind.CATEGORICAL
    feature = Feature(
        name="x",
        kind=feature_kind,
        nullable=nullable,
        categories=["a", "b"] if categorical else None,
        min=None if categorical else 0.0,
        max=None if categorical else 1.0,
    )
    try:
        TypeAdapter(feature_type(feature)).validate_python(json_value, strict=True)
        service_accepts = True
    except ValidationError:
        service_accepts = False
    path = tmp_path / "cell.csv"
    path.write_text(f"x,y\n{cell},0\n")
    frame = pd.read_csv(path, dtype={"x": str} if categorical else None)

    chunk = encode_chunk(frame, [feature])

    assert chunk.refused[0] != service_accepts


def test_missing_columns_and_missing_file_are_run_errors(
    scored_store: ModelStore, tmp_path: Path
) -> None:
    data = tmp_path / "in.csv"
    data.write_text("sepal_length_cm,sepal_width_cm\n1,2\n")
    with pytest.raises(ScoreError, match="lacks the feature column"):
        score_csv(scored_store, "iris", data, tmp_path / "out.csv")
    with pytest.raises(ScoreError, match="not found"):
        score_csv(scored_store, "iris", tmp_path / "nope.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_a_file_that_breaks_midway_stops_the_run_and_leaves_no_output(
    scored_store: ModelStore, tmp_path: Path
) -> None:
    data = tmp_path / "in.csv"
    rows = b"5.1,3.5,1.4,0.2\n" * 50
    header = b"sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n"
    data.write_bytes(header + rows + b"\xff\xfe,1,2,3\n" + rows)
    out = tmp_path / "out.csv"

    with pytest.raises(ScoreError, match="not a readable CSV"):
        score_csv(scored_store, "iris", data, out, chunk_rows=10)

    assert not out.exists()
    assert not errors_path(out).exists()
    assert not list(tmp_path.glob("*.partial"))


def _run_cli(store: ModelStore, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVEWELL_STORE": str(store.root)}
    return subprocess.run(
        [sys.executable, "-m", "training", "score", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_scores_the_production_version_and_reports_speed(
    scored_store: ModelStore, tmp_path: Path
) -> None:
    data = tmp_path / "iris.csv"
    _training_frame("iris").to_csv(data, index=False)

    done = _run_cli(scored_store, "iris", str(data), "--probabilities")

    assert done.returncode == 0, done.stderr
    assert "[iris] v1 (onnx): 150 rows in" in done.stderr
    assert "rows/s); 150 scored, 0 refused" in done.stderr
    scored = pd.read_csv(tmp_path / "iris.scored.csv")
    assert list(scored.columns) == [
        "row",
        "prediction",
        "probability_setosa",
        "probability_versicolor",
        "probability_virginica",
    ]
    np.testing.assert_allclose(scored.iloc[:, 2:].sum(axis=1), 1.0, atol=1e-8)

    diabetes = tmp_path / "diabetes.csv"
    _training_frame("diabetes").to_csv(diabetes, index=False)
    regressor = _run_cli(scored_store, "diabetes", str(diabetes), "--probabilities")
    assert regressor.returncode == 1
    assert "diabetes is a regressor: it has no class probabilities" in regressor.stderr


def _repeated_csv(path: Path, block: pd.DataFrame, rows: int) -> None:
    text = block.to_csv(index=False, lineterminator="\n")
    header, body = text.split("\n", 1)
    with path.open("w") as fh:
        fh.write(header + "\n")
        for _ in range(rows // len(block)):
            fh.write(body)


def _peak_rss_mb(store: ModelStore, data: Path, out: Path, chunk_rows: int) -> float:
    """The scoring subprocess's own peak RSS, as it reports it (VmHWM: ru_maxrss of a child
    of this test process would include the test process's size)."""
    done = _run_cli(store, "iris", str(data), "--out", str(out), "--chunk-rows", str(chunk_rows))
    assert done.returncode == 0, done.stderr
    match = re.search(r"peak memory (\d+) MB", done.stderr)
    assert match is not None, done.stderr
    return float(match.group(1))


@pytest.mark.slow
def test_a_million_rows_score_in_memory_bounded_by_the_chunk(
    scored_store: ModelStore, tmp_path: Path
) -> None:
    block = _training_frame("iris").sample(n=1000, replace=True, random_state=0)
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    _repeated_csv(small, block, 10_000)
    _repeated_csv(large, block, 1_000_000)

    baseline = _peak_rss_mb(scored_store, small, tmp_path / "small.out.csv", 10_000)
    peak = _peak_rss_mb(scored_store, large, tmp_path / "large.out.csv", 10_000)

    # 100 times the rows, the same chunk: the peak hardly moves. Reading the million rows at
    # once (--chunk-rows 1000000) costs about 110 MB more than the baseline.
    print(f"peak RSS: {baseline:.1f} MB for 10 000 rows, {peak:.1f} MB for 1 000 000")
    assert peak < baseline + 40, (baseline, peak)
    with (tmp_path / "large.out.csv").open() as scored:
        assert sum(1 for _ in scored) == 1_000_001

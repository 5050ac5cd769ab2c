from __future__ import annotations

import numpy as np
import pytest

from serving.execution.onnx_runtime import OnnxIO, OnnxModel
from serving.store import ModelStore, sha256_file
from tests.training.conftest import quiet
from training import onnx_export
from training.datasets import load_dataset
from training.run import train
from training.spec import shipped_spec


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "diabetes", "churn"])
def test_shipped_specs_compile_with_recorded_parity(store: ModelStore, name: str) -> None:
    result = train(shipped_spec(name), store, echo=quiet)
    m = result.manifest
    assert m.onnx is not None
    assert m.onnx.status == "ok", m.onnx.reason
    assert m.onnx_ready
    onnx_path = result.path / "model.onnx"
    assert m.files["model.onnx"] == sha256_file(onnx_path)
    parity = m.onnx.parity
    assert parity is not None
    assert parity.passed
    assert parity.label_agreement == 1.0
    assert parity.max_abs_diff <= parity.tolerance
    assert parity.rows_checked > m.n_test_rows + 500  # holdout plus generated rows
    assert parity.converter.startswith("skl2onnx ")
    assert parity.runtime.startswith("onnxruntime ")
    card = (result.path / "report" / "model_card.md").read_text()
    assert "ONNX Runtime (`model.onnx`), verified" in card

    # The served object answers like the pipeline on rows it was not checked on.
    _, pipeline = store.load_model(name, result.version)
    onnx_model = OnnxModel(OnnxIO.of(m), onnx_path.read_bytes())
    rows = onnx_export.generated_rows(m.features, 300, seed=12345)
    X = rows if m.input_format == "dataframe" else rows.to_numpy(dtype=np.float64)
    if m.task == "classification":
        assert onnx_model.predict(X).tolist() == pipeline.predict(X).tolist()
        np.testing.assert_allclose(
            onnx_model.predict_proba(X), pipeline.predict_proba(X), atol=parity.tolerance
        )
    else:
        np.testing.assert_allclose(onnx_model.predict(X), pipeline.predict(X), rtol=1e-9)


def test_unconvertible_model_is_trained_and_says_why(store: ModelStore) -> None:
    spec = shipped_spec("diabetes").with_overrides(
        {
            "name": "custom",
            "estimator": {
                "class": "tests.training.custom_estimators.SquaredRidge",
                "params": {"alpha": 1.0},
            },
        }
    )
    lines: list[str] = []
    result = train(spec, store, echo=lines.append)
    m = result.manifest
    # Squared features explain almost none of diabetes (cv r2 ~0.04): stored, but the gate
    # keeps it below its mean baseline's noise, so it is not promoted.
    assert "trivial baseline" in result.decision.reason
    assert m.onnx is not None
    assert m.onnx.status == "conversion_failed"
    assert m.onnx.reason
    assert "SquaredRidge" in m.onnx.reason
    assert not m.onnx_ready
    assert not (result.path / "model.onnx").exists()
    assert "model.onnx" not in m.files
    assert any("no ONNX (conversion_failed)" in line for line in lines)
    assert (
        "scikit-learn: no ONNX compilation (conversion_failed"
        in (result.path / "report" / "model_card.md").read_text()
    )


def test_parity_failure_keeps_scikit_learn(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the exact-threshold pass, float32 split thresholds make the converted forest
    # disagree with scikit-learn near splits: a real parity failure, caught before serving.
    monkeypatch.setattr(onnx_export, "use_exact_thresholds", lambda onx, final: False)
    result = train(shipped_spec("breast_cancer"), store, echo=quiet)
    m = result.manifest
    assert m.onnx is not None
    assert m.onnx.status == "parity_failed"
    assert m.onnx.parity is not None
    assert not m.onnx.parity.passed
    assert m.onnx.parity.max_abs_diff > m.onnx.parity.tolerance
    assert not m.onnx_ready
    assert not (result.path / "model.onnx").exists()


def test_generated_rows_stay_in_training_ranges(store: ModelStore) -> None:
    spec = shipped_spec("churn")
    data = load_dataset(spec)
    store_features = train(spec, store, echo=quiet).manifest.features
    rows = onnx_export.generated_rows(store_features, 500, seed=1)
    assert list(rows.columns) == list(data.X.columns)
    for f in store_features:
        if f.categories:
            assert set(rows[f.name]) <= set(f.categories)
        else:
            assert f.min is not None
            assert f.max is not None
            assert rows[f.name].between(f.min, f.max).all()
    assert (rows["tenure_months"] == rows["tenure_months"].round()).all()


def _node_dump_error() -> ValueError:
    """What skl2onnx raises when it cannot build a node: every attribute printed (thousands
    of lines of ``0,``), the real reason only in the chained cause."""
    dump = "{'base_values': array([0., 0., 0.], dtype=float32),\n 'class_ids': [0,\n"
    dump += "               0,\n" * 3000 + " 'post_transform': 'SOFTMAX'}."
    try:
        try:
            raise TypeError("Field onnx.AttributeProto.ints: Expected an int, got a boolean.")
        except TypeError as cause:
            raise ValueError(
                "Unable to create node 'TreeEnsembleClassifier' with "
                f"name='TreeEnsembleClassifier' and attributes={dump}"
            ) from cause
    except ValueError as exc:
        return exc


def test_a_conversion_failure_is_summarised_in_one_line_and_kept_whole() -> None:
    exc = _node_dump_error()

    full = onnx_export.failure_text(exc)
    line = onnx_export.summarize(full)

    assert line == (
        "ValueError: Unable to create node 'TreeEnsembleClassifier' (caused by TypeError: "
        "Field onnx.AttributeProto.ints: Expected an int, got a boolean.)"
    )
    assert full.count("0,") > 3000  # the manifest keeps the whole text
    assert full.endswith(
        "Caused by: TypeError: Field onnx.AttributeProto.ints: Expected an int, got a boolean."
    )


def test_an_unconvertible_estimator_is_named_in_one_line(store: ModelStore) -> None:
    spec = shipped_spec("diabetes").with_overrides(
        {
            "name": "custom",
            "estimator": {"class": "tests.training.custom_estimators.SquaredRidge"},
        }
    )
    lines: list[str] = []
    result = train(spec, store, echo=lines.append)

    assert result.manifest.onnx is not None
    assert onnx_export.summary(result.manifest.onnx) == "skl2onnx has no converter for SquaredRidge"
    said = [line for line in lines if "no ONNX" in line]
    assert said == [
        "    no ONNX (conversion_failed): skl2onnx has no converter for SquaredRidge; "
        "serves with scikit-learn"
    ]
    card = (result.path / "report" / "model_card.md").read_text()
    assert "(conversion_failed: skl2onnx has no converter for SquaredRidge)" in card

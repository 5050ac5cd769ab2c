"""Minimal versions for the store tests: manifest fields and a publish, without training."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from serving.store import Environment, ModelStore


def fields(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "created": datetime.now(UTC),
        "task": "regression",
        "input_format": "ndarray",
        "features": [{"name": "x", "kind": "numeric", "min": 0, "max": 1, "mean": 0.5, "std": 0.1}],
        "target": {"name": "y"},
        "estimator": "sklearn.linear_model.Ridge",
        "metrics": {"rmse": 1.0},
        "primary_metric": "rmse",
        "higher_is_better": False,
        "spec": {},
        "data_fingerprint": "0" * 64,
        "n_train_rows": 8,
        "n_test_rows": 2,
        "environment": Environment(python="3.11", sklearn="1", numpy="2", joblib="1", pandas="2"),
    }
    out.update(overrides)
    return out


def publish(store: ModelStore, name: str = "m", payload: bytes = b"model") -> int:
    with store.create_version(name, fields()) as staged:
        staged.model_path.write_bytes(payload)
        (staged.report_dir / "model_card.md").write_text("# card")
    assert staged.version is not None
    return staged.version

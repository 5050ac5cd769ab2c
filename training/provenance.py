"""What a version records about where it came from: the feature schema with training
statistics (and the bins drift detection compares with), and the software environment."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.store import Environment, Feature, FeatureKind
from training.datasets import Dataset


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> Environment:
    import joblib
    import sklearn

    return Environment(
        python=platform.python_version(),
        sklearn=sklearn.__version__,
        numpy=np.__version__,
        joblib=joblib.__version__,
        pandas=pd.__version__,
        git_commit=_git_commit(),
    )


def scalar(value: Any) -> float | int | bool | str:
    return value.item() if hasattr(value, "item") else value  # type: ignore[no-any-return]


def feature_schema(data: Dataset, X_train: pd.DataFrame) -> list[Feature]:
    """Ordered feature schema with statistics from the training split."""
    features = []
    for name, kind in data.kinds.items():
        column = X_train[name]
        nullable = bool(data.X[name].isna().any())
        non_null = column.dropna()
        example_raw = non_null.iloc[0] if len(non_null) else None
        if kind == FeatureKind.CATEGORICAL:
            features.append(
                Feature(
                    name=name,
                    kind=kind,
                    nullable=nullable,
                    categories=sorted({str(v) for v in data.X[name].dropna()}),
                    example=None if example_raw is None else str(example_raw),
                )
            )
            continue
        example: float | int | bool | None = None
        if example_raw is not None:
            if kind == FeatureKind.BOOLEAN:
                example = bool(example_raw)
            elif kind == FeatureKind.INTEGER:
                example = int(example_raw)
            else:
                example = float(example_raw)
        features.append(
            Feature(
                name=name,
                kind=kind,
                nullable=nullable,
                min=float(non_null.min()),
                max=float(non_null.max()),
                mean=float(non_null.mean()),
                std=float(non_null.std(ddof=0)),
                example=example,
                **_training_bins(non_null.to_numpy(dtype=float)),
            )
        )
    return features


def _training_bins(values: np.ndarray[Any, Any]) -> dict[str, list[float]]:
    """Decile bins of the training values and the share of them in each bin, so the service
    can compare the distribution of live inputs with training (population stability index)."""
    if len(values) == 0:
        return {}
    edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return {
        "bin_edges": [float(e) for e in edges],
        "bin_shares": [float(c) for c in counts / len(values)],
    }

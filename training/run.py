"""Train one spec into the store: load, fit, evaluate, export, then the promotion gate."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from serving.onnx_runtime import Signature
from serving.store import (
    Environment,
    Feature,
    FeatureKind,
    Manifest,
    ModelStore,
    OnnxExport,
    Target,
    Task,
)
from training import onnx_export
from training.datasets import Dataset, load_dataset
from training.evaluate import evaluate
from training.gate import GateDecision, decide
from training.pipeline import build_pipeline, import_estimator, task_of
from training.report import write_report
from training.spec import CLASSIFICATION_METRICS, METRICS_HIGHER_IS_BETTER, Spec

Echo = Callable[[str], None]


@dataclass(frozen=True)
class TrainResult:
    name: str
    version: int
    promoted: bool
    manifest: Manifest
    decision: GateDecision
    path: Path


@contextlib.contextmanager
def _stage(echo: Echo, label: str) -> Iterator[None]:
    echo(f"  {label} ...")
    start = time.perf_counter()
    yield
    echo(f"  {label}: done in {time.perf_counter() - start:.2f}s")


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


def _scalar(value: Any) -> float | int | bool | str:
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


def _compile_onnx(
    echo: Echo, model: Any, signature: Signature, X_test: pd.DataFrame, out: Path, spec: Spec
) -> OnnxExport:
    with _stage(echo, "onnx"):
        result = onnx_export.export(model, signature, X_test, out, seed=spec.split.seed)
        if result.status == "ok" and result.parity is not None:
            p = result.parity
            echo(
                f"    parity ok on {p.rows_checked} rows: labels identical, max abs diff "
                f"{p.max_abs_diff:.2g} (tolerance {p.tolerance:.2g}); serves with ONNX Runtime"
            )
        else:
            why = onnx_export.summary(result)
            echo(f"    no ONNX ({result.status}): {why}; serves with scikit-learn")
    return result


def resolve_task(spec: Spec) -> Task:
    if spec.evaluation.task is not None:
        return spec.evaluation.task
    return task_of(import_estimator(spec.estimator.class_))


def train(
    spec: Spec,
    store: ModelStore,
    *,
    force_promote: bool = False,
    echo: Echo = print,
) -> TrainResult:
    """Train ``spec`` into ``store``; promote when the gate allows (or ``force_promote``).

    Every input problem raises before anything is written; the new version becomes visible
    only once it is complete.
    """
    from sklearn.model_selection import train_test_split

    echo(f"[{spec.name}] training {spec.estimator.class_}")
    task = resolve_task(spec)
    primary = spec.evaluation.primary_metric or (
        "f1_macro" if task == Task.CLASSIFICATION else "rmse"
    )
    if (primary in CLASSIFICATION_METRICS) != (task == Task.CLASSIFICATION):
        from training.spec import SpecError

        raise SpecError(f"primary metric {primary!r} does not apply to {task.value}")

    with _stage(echo, "load"):
        data = load_dataset(spec)
        echo(f"    {len(data.X)} rows, {len(data.kinds)} features from {data.origin}")
        for warning in data.warnings:
            echo(f"    warning: {warning}")
    if task == Task.CLASSIFICATION:
        counts = data.y.value_counts()
        if len(counts) < 2:
            from training.datasets import DataError

            raise DataError(f"target {spec.dataset.target!r} has a single class; nothing to learn")
    stratify = data.y if task == Task.CLASSIFICATION and spec.split.stratify else None
    if stratify is not None and data.y.value_counts().min() < 2:
        stratify = None  # a class with one row cannot be split both ways
    X_train, X_test, y_train, y_test = train_test_split(
        data.X,
        data.y,
        test_size=spec.split.test_size,
        random_state=spec.split.seed,
        stratify=stratify,
    )
    features = feature_schema(data, X_train)
    nullable = {f.name for f in features if f.nullable}
    has_categorical = any(k == FeatureKind.CATEGORICAL for k in data.kinds.values())
    input_format: Literal["ndarray", "dataframe"] = "dataframe" if has_categorical else "ndarray"

    def model_input(frame: pd.DataFrame) -> Any:
        return frame if has_categorical else frame.to_numpy(dtype=np.float64)

    with _stage(echo, "fit"):
        model = build_pipeline(spec, data.kinds, nullable)
        model.fit(model_input(X_train), y_train.to_numpy())

    with _stage(echo, "evaluate"):
        evaluation = evaluate(model, model_input(X_test), y_test, task)
        if primary not in evaluation.metrics:
            from training.spec import SpecError

            raise SpecError(f"primary metric {primary!r} could not be computed on the holdout")
        echo("    " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(evaluation.metrics.items())))

    classes = [_scalar(c) for c in model.classes_] if task == Task.CLASSIFICATION else None
    fields: dict[str, Any] = {
        "created": datetime.now(UTC),
        "task": task,
        "input_format": input_format,
        "features": features,
        "target": Target(name=spec.dataset.target, classes=classes),
        "estimator": spec.estimator.class_,
        "metrics": evaluation.metrics,
        "primary_metric": primary,
        "higher_is_better": METRICS_HIGHER_IS_BETTER[primary],
        "spec": spec.to_dict(),
        "data_fingerprint": data.fingerprint,
        "n_train_rows": len(X_train),
        "n_test_rows": len(X_test),
        "environment": environment(),
    }
    with _stage(echo, "export"):
        import joblib

        with store.create_version(spec.name, fields) as staged:
            joblib.dump(model, staged.model_path)
            signature = Signature(task, input_format, features, classes)
            onnx = _compile_onnx(echo, model, signature, X_test, staged.path, spec)
            fields["onnx"] = onnx
            write_report(
                staged.report_dir,
                spec=spec,
                task=task,
                model=model,
                evaluation=evaluation,
                features=features,
                context={
                    "origin": data.origin,
                    "fingerprint": data.fingerprint,
                    "n_train": len(X_train),
                    "n_test": len(X_test),
                    "classes": classes,
                    "primary_metric": primary,
                    "onnx": onnx,
                },
                holdout=model_input(X_test),
            )
        assert staged.version is not None
        version = staged.version
        echo(f"    wrote {staged.path}")

    manifest = store.manifest(spec.name, version)
    decision = decide(store, manifest, tolerance=spec.evaluation.tolerance)
    promoted = decision.promote or force_promote
    if promoted:
        store.promote(spec.name, version)
    return TrainResult(
        name=spec.name,
        version=version,
        promoted=promoted,
        manifest=manifest,
        decision=decision,
        path=staged.path,
    )

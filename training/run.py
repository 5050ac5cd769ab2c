"""Train one spec into the store: load, fit, evaluate, export, then the promotion gate."""

from __future__ import annotations

import contextlib
import csv
import json
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from serving.execution.onnx_runtime import OnnxIO
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
from training import gate, onnx_export
from training.datasets import DataError, Dataset, load_dataset
from training.evaluate import FoldScores, cross_validate, evaluate, summary
from training.folds import Splits, make_splits
from training.gate import Comparison, GateDecision
from training.pipeline import build_pipeline, import_estimator, task_of
from training.report import write_report
from training.search import SearchOutcome, run_search
from training.spec import CLASSIFICATION_METRICS, METRICS_HIGHER_IS_BETTER, Spec, SpecError

Echo = Callable[[str], None]


OUTCOME_KEY = "outcome"
"""Key of ``Manifest.spec`` that holds what training found rather than what the spec asked
(folds, baseline, search results, the gate's reason); spec comparisons leave it out."""
EVALUATION_FILE = "evaluation.json"
"""In the report folder: holdout metrics, every fold score, the gate's comparisons."""
SEARCH_FILE = "search_results.csv"
"""In the report folder of a searched version: one row per candidate, best first."""


@dataclass(frozen=True)
class TrainResult:
    name: str
    version: int
    """The new version, or production's when the run was identical to it."""
    promoted: bool
    manifest: Manifest
    decision: GateDecision
    path: Path
    identical: bool = False
    """Same data, spec and metrics as production: nothing was written."""


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
    echo: Echo, model: Any, signature: OnnxIO, X_test: pd.DataFrame, out: Path, spec: Spec
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


def _baselines(task: Task, seed: int) -> dict[str, Any]:
    from sklearn.dummy import DummyClassifier, DummyRegressor

    if task == Task.REGRESSION:
        return {"mean": DummyRegressor(strategy="mean")}
    # most_frequent is the bar for accuracy (and scores every ranking metric at chance);
    # stratified guesses score higher on macro F1, where most_frequent leaves classes empty.
    return {
        "most_frequent": DummyClassifier(strategy="most_frequent"),
        "stratified": DummyClassifier(strategy="stratified", random_state=seed),
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def _identical(
    prod: Manifest, spec_dict: dict[str, Any], fp: str, metrics: dict[str, float]
) -> bool:
    recorded = {k: v for k, v in prod.spec.items() if k != OUTCOME_KEY}
    return (
        prod.data_fingerprint == fp
        and recorded == spec_dict
        and set(prod.metrics) == set(metrics)
        and all(abs(prod.metrics[k] - v) <= 1e-12 for k, v in metrics.items())
    )


def _production_scores(
    store: ModelStore,
    name: str,
    signature: tuple[Task, str, list[str]],
    X_train: pd.DataFrame,
    y_train: np.ndarray[Any, Any],
    splits: Splits,
    to_input: Callable[[pd.DataFrame], Any],
    echo: Echo,
) -> tuple[Manifest | None, FoldScores | None]:
    """Production's pipeline refitted on the candidate's folds, when its inputs match."""
    current = store.production(name)
    if current is None:
        return None, None
    manifest, model = store.load_model(name, current)
    if (manifest.task, manifest.input_format, manifest.feature_names) != signature:
        echo(f"    production v{current} takes other inputs; not refitted on these folds")
        return manifest, None
    try:
        return manifest, cross_validate(
            model, X_train, y_train, splits.folds, task=manifest.task, to_input=to_input
        )
    except (ValueError, TypeError) as exc:  # e.g. missing values its pipeline never imputed
        echo(f"    production v{current} could not be refitted on these folds: {exc}")
        return manifest, None


def _versus_production(
    spec: Spec,
    prod: Manifest,
    prod_scores: FoldScores | None,
    cv: FoldScores,
    metrics: dict[str, float],
    primary: str,
    splits: Splits,
) -> Comparison:
    higher = METRICS_HIGHER_IS_BETTER[primary]
    against = f"production v{prod.version}"
    margin = spec.evaluation.tolerance
    if prod_scores is not None and primary in prod_scores:
        return gate.paired(
            against,
            primary,
            cv[primary],
            prod_scores[primary],
            significance=spec.evaluation.significance,
            validate_to_fit=splits.validate_to_fit,
            higher_is_better=higher,
            margin=margin,
        )
    mean, std = f"cv_{primary}_mean", f"cv_{primary}_std"
    if mean in prod.metrics and std in prod.metrics:
        return gate.unpaired(
            against,
            primary,
            (metrics[mean], metrics[std]),
            (prod.metrics[mean], prod.metrics[std]),
            k=len(splits.folds),
            significance=spec.evaluation.significance,
            validate_to_fit=splits.validate_to_fit,
            higher_is_better=higher,
            margin=margin,
        )
    old = prod.metrics.get(primary, float("-inf") if higher else float("inf"))
    return gate.holdout_only(
        against, primary, metrics[primary], old, higher_is_better=higher, margin=margin
    )


def train(
    spec: Spec,
    store: ModelStore,
    *,
    force_promote: bool = False,
    echo: Echo = print,
) -> TrainResult:
    """Train ``spec`` into ``store``; promote when the gate allows (or ``force_promote``).

    Every input problem raises before anything is written; the new version becomes visible
    only once it is complete. A run whose data fingerprint, spec and metrics all equal
    production's writes nothing (unless forced) and returns ``identical=True``.
    """
    echo(f"[{spec.name}] training {spec.estimator.class_}")
    task = resolve_task(spec)
    primary = spec.evaluation.primary_metric or (
        "f1_macro" if task == Task.CLASSIFICATION else "rmse"
    )
    if (primary in CLASSIFICATION_METRICS) != (task == Task.CLASSIFICATION):
        raise SpecError(f"primary metric {primary!r} does not apply to {task.value}")

    with _stage(echo, "load"):
        data = load_dataset(spec)
        echo(f"    {len(data.X)} rows, {len(data.kinds)} features from {data.origin}")
        for warning in data.warnings:
            echo(f"    warning: {warning}")
    if task == Task.CLASSIFICATION:
        counts = data.y.value_counts()
        if len(counts) < 2:
            raise DataError(f"target {spec.dataset.target!r} has a single class; nothing to learn")
    splits = make_splits(spec, data, task)
    X_train, X_test = data.X.iloc[splits.train], data.X.iloc[splits.test]
    y_train, y_test = data.y.iloc[splits.train], data.y.iloc[splits.test]
    features = feature_schema(data, X_train)
    nullable = {f.name for f in features if f.nullable}
    has_categorical = any(k == FeatureKind.CATEGORICAL for k in data.kinds.values())
    input_format: Literal["ndarray", "dataframe"] = "dataframe" if has_categorical else "ndarray"

    def model_input(frame: pd.DataFrame) -> Any:
        return frame if has_categorical else frame.to_numpy(dtype=np.float64)

    y_fit = y_train.to_numpy()
    searched: SearchOutcome | None = None
    with _stage(echo, "fit"):
        model = build_pipeline(spec, data.kinds, nullable)
        if spec.search is not None:
            searched = run_search(
                spec.search, model, model_input(X_train), y_fit, splits.folds, primary=primary
            )
            model = searched.model
            echo(
                f"    {spec.search.kind} search over {len(searched.table)} candidates by "
                f"{searched.scoring}: best {searched.best_params}"
            )
        else:
            model.fit(model_input(X_train), y_fit)

    with _stage(echo, "cross-validate"):
        cv = cross_validate(model, X_train, y_fit, splits.folds, task, model_input)
        if primary not in cv:
            raise SpecError(f"primary metric {primary!r} could not be computed on every fold")
        echo(f"    {splits.kind}: " + _spread(cv))

    with _stage(echo, "evaluate"):
        evaluation = evaluate(model, model_input(X_test), y_test, task)
        if primary not in evaluation.metrics:
            raise SpecError(f"primary metric {primary!r} could not be computed on the holdout")
        echo(
            "    holdout: "
            + ", ".join(f"{k}={v:.4f}" for k, v in sorted(evaluation.metrics.items()))
        )

    with _stage(echo, "baseline"):
        higher = METRICS_HIGHER_IS_BETTER[primary]
        tried = {
            label: cross_validate(dummy, X_train, y_fit, splits.folds, task, model_input)
            for label, dummy in _baselines(task, spec.split.seed).items()
        }
        usable = {k: v for k, v in tried.items() if primary in v}
        strategy = (max if higher else min)(usable, key=lambda k: _mean(usable[k][primary]))
        baseline_cv = usable[strategy]
        dummy = _baselines(task, spec.split.seed)[strategy].fit(model_input(X_train), y_fit)
        baseline_holdout = evaluate(dummy, model_input(X_test), y_test, task).metrics
        echo(f"    {strategy}: " + _spread(baseline_cv))

    metrics: dict[str, float] = {
        **evaluation.metrics,
        **summary(cv),
        **{f"baseline_{k}": v for k, v in baseline_holdout.items()},
        **summary(baseline_cv, prefix="baseline_cv_"),
    }
    spec_dict = spec.to_dict()
    current = store.production(spec.name)
    if current is not None:
        prod_manifest = store.manifest(spec.name, current)
        if _identical(prod_manifest, spec_dict, data.fingerprint, metrics):
            echo(f"    identical to production v{current} (same data, spec and metrics)")
            if not force_promote:
                return TrainResult(
                    name=spec.name,
                    version=current,
                    promoted=False,
                    manifest=prod_manifest,
                    decision=GateDecision(
                        False, f"identical to production v{current}", prod_manifest
                    ),
                    path=store.version_path(spec.name, current),
                    identical=True,
                )

    with _stage(echo, "gate"):
        versus_baseline = gate.paired(
            f"the trivial baseline ({strategy})",
            primary,
            cv[primary],
            baseline_cv[primary],
            higher_is_better=higher,
            margin=0.0,
            significance=spec.evaluation.significance,
            validate_to_fit=splits.validate_to_fit,
        )
        prod, prod_scores = _production_scores(
            store,
            spec.name,
            (task, input_format, list(data.kinds)),
            X_train,
            y_fit,
            splits,
            model_input,
            echo,
        )
        versus = (
            None
            if prod is None
            else _versus_production(spec, prod, prod_scores, cv, metrics, primary, splits)
        )
        decision = gate.decide(
            versus_baseline, prod, versus, None if prod_scores is None else summary(prod_scores)
        )
        echo(f"    {decision.reason}")

    classes = [_scalar(c) for c in model.classes_] if task == Task.CLASSIFICATION else None
    outcome: dict[str, Any] = {
        "cv": splits.kind,
        "folds": len(splits.folds),
        "baseline": strategy,
        "gate": decision.reason,
        "forced": force_promote and not decision.promote,
        "search": None
        if searched is None
        else {
            "kind": spec.search.kind if spec.search else None,
            "scoring": searched.scoring,
            "best_params": searched.best_params,
            "results": searched.table,
        },
    }
    fields: dict[str, Any] = {
        "created": datetime.now(UTC),
        "task": task,
        "input_format": input_format,
        "features": features,
        "target": Target(name=spec.dataset.target, classes=classes),
        "estimator": spec.estimator.class_,
        "metrics": metrics,
        "primary_metric": primary,
        "higher_is_better": higher,
        "spec": {**spec_dict, OUTCOME_KEY: outcome},
        "data_fingerprint": data.fingerprint,
        "n_train_rows": len(X_train),
        "n_test_rows": len(X_test),
        "environment": environment(),
    }
    with _stage(echo, "export"):
        import joblib

        with store.create_version(spec.name, fields) as staged:
            joblib.dump(model, staged.model_path)
            signature = OnnxIO(task, input_format, features, classes)
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
                all_metrics=metrics,
            )
            _write_evaluation(
                staged.report_dir,
                holdout=evaluation.metrics,
                folds={"candidate": cv, strategy: baseline_cv, "production": prod_scores},
                decision=decision,
                outcome=outcome,
            )
            if searched is not None:
                _write_search_table(staged.report_dir / SEARCH_FILE, searched.table)
        assert staged.version is not None
        version = staged.version
        echo(f"    wrote {staged.path}")

    manifest = store.manifest(spec.name, version)
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


def _spread(scores: FoldScores) -> str:
    return ", ".join(
        f"{k}={np.mean(v):.4f}±{np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}"
        for k, v in sorted(scores.items())
    )


def _write_evaluation(
    out: Path,
    *,
    holdout: dict[str, float],
    folds: dict[str, FoldScores | None],
    decision: GateDecision,
    outcome: dict[str, Any],
) -> None:
    """Every fold score behind the gate's decision, next to the holdout figures."""
    comparisons = [c for c in (decision.baseline, decision.versus_production) if c is not None]
    body = {
        "holdout": holdout,
        "cv": outcome["cv"],
        "folds": {k: v for k, v in folds.items() if v is not None},
        "gate": {
            "promote": decision.promote,
            "reason": decision.reason,
            "comparisons": [{**asdict(c), "better": c.better} for c in comparisons],
        },
    }
    (out / EVALUATION_FILE).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


def _write_search_table(path: Path, table: list[dict[str, Any]]) -> None:
    names = sorted({k for row in table for k in row["params"]})
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["rank", "mean_test_score", "std_test_score", *names])
        for row in table:
            writer.writerow(
                [
                    row["rank"],
                    repr(row["mean_test_score"]),
                    repr(row["std_test_score"]),
                    *(row["params"].get(n, "") for n in names),
                ]
            )

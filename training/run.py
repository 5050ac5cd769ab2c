"""Train one spec into the store: load, fit, evaluate, export, then the promotion gate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from serving.execution.onnx_runtime import OnnxIO
from serving.store import (
    Explanations,
    Manifest,
    ModelStore,
    OnnxExport,
    Target,
    Task,
)
from training import gate, onnx_export
from training.capture_data import TrafficFacts
from training.capture_data import capture_url as default_capture_url
from training.contenders import production_scores, versus_production
from training.evaluate import FoldScores, summary
from training.explanations import holdout_summary, write_background
from training.fitting import Echo, Scores, Split, fit_and_score, load_split, primary_metric, stage
from training.gate import GateDecision
from training.importance import Importances
from training.pipeline import import_estimator, task_of
from training.provenance import environment, scalar
from training.records import SEARCH_FILE, write_evaluation, write_search_table
from training.report import write_report
from training.spec import METRICS_HIGHER_IS_BETTER, Spec
from training.traffic import load_traffic_split, versus_served

OUTCOME_KEY = "outcome"
"""Key of ``Manifest.spec`` that holds what training found rather than what the spec asked
(folds, baseline, search results, the gate's reason); spec comparisons leave it out."""


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


def _compile_onnx(
    echo: Echo, model: Any, signature: OnnxIO, X_test: pd.DataFrame, out: Path, spec: Spec
) -> OnnxExport:
    with stage(echo, "onnx"):
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


def _explanations(
    echo: Echo, model: Any, split: Split, holdout: Any, out: Path
) -> tuple[Explanations, Importances | None]:
    """Write the explanation background; the manifest entry and the holdout summary."""
    with stage(echo, "explain"):
        names = [f.name for f in split.features]
        entry, found = write_background(model, split.model_input(split.X_train), names, out)
        if found is None:
            echo(f"    no explanations: {entry.reason}")
            return entry, None
        echo(f"    explanations: {entry.method} method, contributions in {entry.space} space")
        return entry, holdout_summary(model, found, holdout)


def resolve_task(spec: Spec) -> Task:
    if spec.evaluation.task is not None:
        return spec.evaluation.task
    return task_of(import_estimator(spec.estimator.class_))


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


def train(
    spec: Spec,
    store: ModelStore,
    *,
    force_promote: bool = False,
    echo: Echo = print,
    capture_url: str | None = None,
) -> TrainResult:
    """Train ``spec`` into ``store``; promote when the gate allows (or ``force_promote``).

    Every input problem raises before anything is written; the new version becomes visible
    only once it is complete. A run whose data fingerprint, spec and metrics all equal
    production's writes nothing (unless forced) and returns ``identical=True``. With the spec's
    ``capture.use`` set, the data is the model's labelled traffic read from ``capture_url``
    (default: the service's, see training.capture_data.capture_url) and the gate compares
    with production as served on the newest of it (training/traffic.py).
    """
    echo(f"[{spec.name}] training {spec.estimator.class_}")
    task = resolve_task(spec)
    primary = primary_metric(spec, task)
    split, traffic = _load(spec, task, store, capture_url, echo)
    scores = fit_and_score(spec, task, split, primary, echo)
    spec_dict = spec.to_dict()
    unchanged = _unchanged(store, spec, spec_dict, split, scores.metrics, echo)
    if unchanged is not None and not force_promote:
        return unchanged
    decision, prod_scores = _gate(spec, store, task, primary, split, scores, echo, traffic)
    outcome = _outcome(spec, split, scores, decision, force_promote, traffic)
    fields = _fields(spec, task, primary, split, scores, {**spec_dict, OUTCOME_KEY: outcome})
    with stage(echo, "export"):
        version, path = _publish(
            spec,
            store,
            task,
            fields,
            split,
            scores,
            echo,
            primary=primary,
            outcome=outcome,
            decision=decision,
            production_folds=prod_scores,
            data_notes=[] if traffic is None else traffic.lines(),
        )
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
        path=path,
    )


def _load(
    spec: Spec, task: Task, store: ModelStore, capture_url: str | None, echo: Echo
) -> tuple[Split, TrafficFacts | None]:
    """The spec's data split for training, or its model's labelled traffic (and what of it)."""
    if spec.capture.use == "none":
        return load_split(spec, task, echo), None
    url = capture_url or default_capture_url(store.root)
    return load_traffic_split(spec, task, store, url, echo)


def _unchanged(
    store: ModelStore,
    spec: Spec,
    spec_dict: dict[str, Any],
    split: Split,
    metrics: dict[str, float],
    echo: Echo,
) -> TrainResult | None:
    """Production's result when this run equals it (same data, spec and metrics), else None."""
    current = store.production(spec.name)
    if current is None:
        return None
    prod_manifest = store.manifest(spec.name, current)
    if not _identical(prod_manifest, spec_dict, split.data.fingerprint, metrics):
        return None
    echo(f"    identical to production v{current} (same data, spec and metrics)")
    return TrainResult(
        name=spec.name,
        version=current,
        promoted=False,
        manifest=prod_manifest,
        decision=GateDecision(False, f"identical to production v{current}", prod_manifest),
        path=store.version_path(spec.name, current),
        identical=True,
    )


def _gate(
    spec: Spec,
    store: ModelStore,
    task: Task,
    primary: str,
    split: Split,
    scores: Scores,
    echo: Echo,
    traffic: TrafficFacts | None = None,
) -> tuple[GateDecision, FoldScores | None]:
    """The gate's decision, and production's scores on the candidate's folds (if refitted), or
    with ``traffic``, as served on the chunks of the newest traffic."""
    splits = split.splits
    with stage(echo, "gate"):
        versus_baseline = gate.paired(
            f"the trivial baseline ({scores.strategy})",
            primary,
            scores.cv[primary],
            scores.baseline_cv[primary],
            higher_is_better=METRICS_HIGHER_IS_BETTER[primary],
            margin=0.0,
            significance=spec.evaluation.significance,
            validate_to_fit=splits.validate_to_fit,
        )
        if traffic is not None:
            served, on_traffic, served_scores = versus_served(spec, store, scores, split, echo)
            decision = gate.decide(versus_baseline, served, on_traffic)
            echo(f"    {decision.reason}")
            return decision, served_scores
        prod, prod_scores = production_scores(
            store,
            spec.name,
            (task, split.input_format, list(split.data.kinds)),
            split.X_train,
            split.y_fit,
            splits,
            split.model_input,
            echo,
        )
        versus = (
            None
            if prod is None
            else versus_production(
                spec, prod, prod_scores, scores.cv, scores.metrics, primary, splits
            )
        )
        decision = gate.decide(
            versus_baseline, prod, versus, None if prod_scores is None else summary(prod_scores)
        )
        echo(f"    {decision.reason}")
    return decision, prod_scores


def _classes(model: Any, task: Task) -> list[float | int | bool | str] | None:
    return [scalar(c) for c in model.classes_] if task == Task.CLASSIFICATION else None


def _outcome(
    spec: Spec,
    split: Split,
    scores: Scores,
    decision: GateDecision,
    force_promote: bool,
    traffic: TrafficFacts | None,
) -> dict[str, Any]:
    """What training found (kept in the manifest's spec under ``OUTCOME_KEY``)."""
    searched = scores.searched
    capture = {} if traffic is None else {"capture": traffic.to_dict()}
    return {
        **capture,
        "cv": split.splits.kind,
        "folds": len(split.splits.folds),
        "baseline": scores.strategy,
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


def _fields(
    spec: Spec,
    task: Task,
    primary: str,
    split: Split,
    scores: Scores,
    recorded_spec: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's fields but those the store and the ONNX export fill in."""
    classes = _classes(scores.model, task)
    return {
        "created": datetime.now(UTC),
        "task": task,
        "input_format": split.input_format,
        "features": split.features,
        "target": Target(name=spec.dataset.target, classes=classes),
        "estimator": spec.estimator.class_,
        "metrics": scores.metrics,
        "primary_metric": primary,
        "higher_is_better": METRICS_HIGHER_IS_BETTER[primary],
        "spec": recorded_spec,
        "data_fingerprint": split.data.fingerprint,
        "n_train_rows": len(split.X_train),
        "n_test_rows": len(split.X_test),
        "environment": environment(),
    }


def _publish(
    spec: Spec,
    store: ModelStore,
    task: Task,
    fields: dict[str, Any],
    split: Split,
    scores: Scores,
    echo: Echo,
    *,
    primary: str,
    outcome: dict[str, Any],
    decision: GateDecision,
    production_folds: FoldScores | None,
    data_notes: list[str],
) -> tuple[int, Path]:
    """Write the version (model, ONNX, report, evaluation); return its number and folder."""
    import joblib

    model = scores.model
    classes = _classes(model, task)
    with store.create_version(spec.name, fields) as staged:
        joblib.dump(model, staged.model_path)
        signature = OnnxIO(task, split.input_format, split.features, classes)
        onnx = _compile_onnx(echo, model, signature, split.X_test, staged.path, spec)
        fields["onnx"] = onnx
        holdout = split.model_input(split.X_test)
        explain, contributions = _explanations(echo, model, split, holdout, staged.path)
        fields["explain"] = explain
        write_report(
            staged.report_dir,
            spec=spec,
            task=task,
            model=model,
            evaluation=scores.evaluation,
            features=split.features,
            context={
                "origin": split.data.origin,
                "fingerprint": split.data.fingerprint,
                "n_train": len(split.X_train),
                "n_test": len(split.X_test),
                "classes": classes,
                "primary_metric": primary,
                "onnx": onnx,
                "data_notes": data_notes,
            },
            holdout=holdout,
            all_metrics=scores.metrics,
            contributions=contributions,
        )
        write_evaluation(
            staged.report_dir,
            holdout=scores.evaluation.metrics,
            folds={
                "candidate": scores.cv,
                scores.strategy: scores.baseline_cv,
                "production": production_folds,
            },
            decision=decision,
            outcome=outcome,
        )
        if scores.searched is not None:
            write_search_table(staged.report_dir / SEARCH_FILE, scores.searched.table)
    assert staged.version is not None
    echo(f"    wrote {staged.path}")
    return staged.version, staged.path

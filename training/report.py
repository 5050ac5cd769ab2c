"""The report folder of a version: metrics.json, PNG plots and a Markdown model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from serving.store import Feature, FeatureKind, OnnxExport, Task
from training.evaluate import Evaluation
from training.spec import Spec


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    # Fixed metadata keeps the PNG bytes (and so the manifest hashes) reproducible.
    fig.savefig(path, dpi=100, metadata={"Software": None})
    _pyplot().close(fig)
    return path.name


def _confusion(ev: Evaluation, out: Path) -> str:
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    assert ev.classes is not None
    matrix = confusion_matrix(ev.y_true, ev.y_pred, labels=ev.classes)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(ev.classes))
    ax.set_xticks(ticks, [str(c) for c in ev.classes], rotation=45, ha="right")
    ax.set_yticks(ticks, [str(c) for c in ev.classes])
    for i in ticks:
        for j in ticks:
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("Confusion matrix (holdout)")
    return _save(fig, out / "confusion_matrix.png")


def _roc(ev: Evaluation, out: Path) -> str | None:
    from sklearn.metrics import roc_curve

    if ev.proba is None or ev.classes is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for idx, cls in enumerate(ev.classes):
        positives = ev.y_true == cls
        if positives.all() or not positives.any() or (len(ev.classes) == 2 and idx == 0):
            continue
        fpr, tpr, _ = roc_curve(positives, ev.proba[:, idx])
        ax.plot(fpr, tpr, label=f"{cls} vs rest")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (holdout)")
    ax.legend(loc="lower right")
    return _save(fig, out / "roc.png")


def _regression_plots(ev: Evaluation, out: Path) -> list[str]:
    plt = _pyplot()
    y_true = ev.y_true.astype(float)
    y_pred = ev.y_pred.astype(float)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(y_true, y_pred, s=12, alpha=0.7)
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey")
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted vs actual (holdout)")
    first = _save(fig, out / "predicted_vs_actual.png")
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(y_pred, y_true - y_pred, s=12, alpha=0.7)
    ax.axhline(0, linestyle="--", color="grey")
    ax.set_xlabel("predicted")
    ax.set_ylabel("residual (actual - predicted)")
    ax.set_title("Residuals (holdout)")
    return [first, _save(fig, out / "residuals.png")]


def feature_importances(
    model: Any, feature_names: list[str]
) -> tuple[str, dict[str, float]] | None:
    """(kind, importance by transformed feature) of the final estimator, where it has them."""
    final = model[-1] if hasattr(model, "steps") else model
    if hasattr(final, "feature_importances_"):
        kind = "impurity-based importance"
        values = np.asarray(final.feature_importances_, dtype=float)
    elif hasattr(final, "coef_"):
        kind = "mean |coefficient| on preprocessed inputs"
        values = np.abs(np.atleast_2d(np.asarray(final.coef_, dtype=float))).mean(axis=0)
    else:
        return None
    names = feature_names
    if hasattr(model, "steps") and len(model.steps) > 1:
        try:
            names = [str(n) for n in model[:-1].get_feature_names_out(feature_names)]
        except (AttributeError, ValueError):
            names = feature_names
    if len(names) != len(values):
        names = [f"x{i}" for i in range(len(values))]
    return kind, dict(zip(names, values.tolist(), strict=True))


def _importance_plot(kind: str, importances: dict[str, float], out: Path) -> str:
    plt = _pyplot()
    top = sorted(importances.items(), key=lambda kv: kv[1], reverse=True)[:20]
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(top) + 1.2))
    ax.barh([k for k, _ in reversed(top)], [v for _, v in reversed(top)])
    ax.set_title(f"Feature importances ({kind})", fontsize=10)
    return _save(fig, out / "feature_importances.png")


def _feature_table(features: list[Feature]) -> list[str]:
    lines = ["| feature | kind | training range / categories | nullable |", "|---|---|---|---|"]
    for f in features:
        if f.kind == FeatureKind.CATEGORICAL:
            span = ", ".join(f.categories or [])
        else:
            span = f"{f.min:g} … {f.max:g} (mean {f.mean:.3g}, std {f.std:.3g})"
        lines.append(f"| `{f.name}` | {f.kind.value} | {span} | {'yes' if f.nullable else 'no'} |")
    return lines


def _runtime_lines(onnx: OnnxExport | None) -> list[str]:
    if onnx is None:
        return ["scikit-learn (no ONNX export was attempted)."]
    if onnx.status == "ok" and onnx.parity is not None:
        p = onnx.parity
        return [
            f"ONNX Runtime (`{onnx.file}`), verified against the scikit-learn pipeline on "
            f"{p.rows_checked} rows (holdout, random rows in the training ranges, and rows near "
            f"decision boundaries): label agreement {p.label_agreement:.6f}, max abs difference "
            f"{p.max_abs_diff:.3g} (tolerance {p.tolerance:.3g}); {p.converter}, {p.runtime}."
        ]
    return [f"scikit-learn: no ONNX compilation ({onnx.status}: {onnx.reason})."]


def write_report(
    out: Path,
    *,
    spec: Spec,
    task: Task,
    model: Any,
    evaluation: Evaluation,
    features: list[Feature],
    context: dict[str, Any],
) -> list[str]:
    """Write metrics.json, plots and model_card.md into ``out``; return the plot file names."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(
        json.dumps(evaluation.metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    plots: list[str] = []
    if task == Task.CLASSIFICATION:
        plots.append(_confusion(evaluation, out))
        roc = _roc(evaluation, out)
        if roc:
            plots.append(roc)
    else:
        plots.extend(_regression_plots(evaluation, out))
    importances = feature_importances(model, [f.name for f in features])
    if importances:
        plots.append(_importance_plot(*importances, out))

    metric_rows = [f"| {k} | {v:.4f} |" for k, v in sorted(evaluation.metrics.items())]
    card = [
        f"# Model card: {spec.name}",
        "",
        spec.description or "",
        "",
        f"- Task: {task.value}",
        f"- Estimator: `{spec.estimator.class_}` with params `{spec.estimator.params}`",
        f"- Data: {context['origin']} (sha256 `{context['fingerprint'][:16]}…`)",
        f"- Rows: {context['n_train']} train, {context['n_test']} holdout "
        f"(test size {spec.split.test_size}, seed {spec.split.seed})",
        f"- Target: `{spec.dataset.target}`"
        + (f", classes {context['classes']}" if context.get("classes") else ""),
        "",
        "## Holdout metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *metric_rows,
        "",
        f"Primary metric for promotion: **{context['primary_metric']}** "
        f"(tolerance {spec.evaluation.tolerance}).",
        "",
        "## Features",
        "",
        *_feature_table(features),
        "",
        "## Plots",
        "",
        *[f"![{p.removesuffix('.png').replace('_', ' ')}]({p})" for p in plots],
        "",
        "## Serving runtime",
        "",
        *_runtime_lines(context.get("onnx")),
        "",
        "## Limitations",
        "",
        "Predictions outside the training ranges above are extrapolations; "
        "categories not seen in training are ignored by the one-hot encoder.",
        "",
    ]
    (out / "model_card.md").write_text("\n".join(card), encoding="utf-8")
    return plots

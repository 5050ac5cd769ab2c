"""The report folder of a version: metrics.json, importance.json, PNG plots and the Markdown
model card (training/model_card.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.store import Feature, Task
from training import importance
from training.evaluate import Evaluation
from training.importance import Importances
from training.model_card import CardFacts, render
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


def _one_vs_rest(ev: Evaluation) -> list[tuple[str, Any, Any]]:
    """(legend name, is-this-class, score) per curve: the positive class alone for a binary
    target (its probability is the score), every class against the rest otherwise."""
    assert ev.proba is not None
    assert ev.classes is not None
    if len(ev.classes) == 2:
        positive = ev.classes[1]
        return [(str(positive), ev.y_true == positive, ev.proba[:, 1])]
    curves = []
    for idx, cls in enumerate(ev.classes):
        positives = ev.y_true == cls
        if positives.all() or not positives.any():
            continue  # a curve needs both kinds of rows
        curves.append((f"{cls} vs rest", positives, ev.proba[:, idx]))
    return curves


def _binary_title(ev: Evaluation, what: str) -> str:
    assert ev.classes is not None
    if len(ev.classes) == 2:
        return f"{what} (holdout; positive class: {ev.classes[1]})"
    return f"{what} (holdout; each class vs rest)"


def _roc(ev: Evaluation, out: Path) -> str | None:
    from sklearn.metrics import roc_auc_score, roc_curve

    if ev.proba is None or ev.classes is None:
        return None
    curves = _one_vs_rest(ev)
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, positives, score in curves:
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(positives, score):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance (AUC 0.5)")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(_binary_title(ev, "ROC"), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out / "roc.png")


def _precision_recall(ev: Evaluation, out: Path) -> str | None:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    if ev.proba is None or ev.classes is None:
        return None
    curves = [c for c in _one_vs_rest(ev) if c[1].any() and not c[1].all()]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, positives, score in curves:
        precision, recall, _ = precision_recall_curve(positives, score)
        ap = average_precision_score(positives, score)
        ax.plot(recall, precision, label=f"{name} (AP {ap:.3f}, base rate {positives.mean():.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title(_binary_title(ev, "Precision-recall"), fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, out / "precision_recall.png")


def _calibration(ev: Evaluation, out: Path) -> str | None:
    from sklearn.calibration import calibration_curve

    if ev.proba is None or ev.classes is None:
        return None
    curves = [c for c in _one_vs_rest(ev) if c[1].any() and not c[1].all()]
    if not curves:
        return None
    # Equal-count bins: a small holdout leaves equal-width bins near empty.
    bins = max(2, min(10, len(ev.y_true) // 15))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, positives, score in curves:
        observed, predicted = calibration_curve(positives, score, n_bins=bins, strategy="quantile")
        ax.plot(predicted, observed, marker="o", label=name)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(_binary_title(ev, "Calibration"), fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, out / "calibration.png")


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


def _importance_plot(importances: Importances, out: Path, file: str, title: str) -> str:
    plt = _pyplot()
    top = importances.ranked()[:20]
    names = [k for k, _ in reversed(top)]
    values = [v for _, v in reversed(top)]
    spread = importances.spread
    errors = [spread[k] for k in names] if spread is not None else None
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(top) + 1.4))
    ax.barh(names, values, xerr=errors)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_title(f"{title}\n{importances.kind}", fontsize=9)
    return _save(fig, out / file)


def write_report(
    out: Path,
    *,
    spec: Spec,
    task: Task,
    model: Any,
    evaluation: Evaluation,
    features: list[Feature],
    context: dict[str, Any],
    holdout: Any = None,
    all_metrics: dict[str, float] | None = None,
    extra_comparison_rows: Sequence[Sequence[str]] = (),
    contributions: Importances | None = None,
) -> list[str]:
    """Write metrics.json, importance.json, plots and model_card.md into ``out``; return the
    plot file names.

    ``holdout``: the holdout rows as the pipeline takes them (permutation importance shuffles
    its columns; without it the card has no permutation importance).
    ``all_metrics``: the manifest's metrics (default: the holdout's); the card's "Baseline and
    cross-validation" table shows their ``baseline_<metric>``, ``baseline_cv_<metric>_mean``
    / ``_std`` and ``cv_<metric>_mean`` / ``_std``. ``extra_comparison_rows``: more rows for
    that table (cells: metric, holdout, baseline, cross-validation). ``contributions``: the
    holdout's mean absolute feature contributions (training.explanations), plotted as
    ``contributions.png``.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(
        json.dumps(evaluation.metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    plots = _metric_plots(task, evaluation, out)
    permuted, importance_plots = _importances(
        out, spec, model, evaluation, [f.name for f in features], context, holdout
    )
    plots.extend(importance_plots)
    if contributions is not None:
        title = "Mean absolute contribution per feature (exact explanations)"
        plots.append(_importance_plot(contributions, out, "contributions.png", title))
    card = render(
        _card_facts(spec, task, context),
        metrics={**(all_metrics or {}), **evaluation.metrics},
        features=features,
        plots=plots,
        onnx=context.get("onnx"),
        importances=permuted,
        extra_comparison_rows=extra_comparison_rows,
    )
    (out / "model_card.md").write_text(card, encoding="utf-8")
    return plots


def _metric_plots(task: Task, evaluation: Evaluation, out: Path) -> list[str]:
    """The plots of the holdout's predictions: confusion, ROC, precision-recall and
    calibration for classifiers (those that apply), residual plots for regressors."""
    if task != Task.CLASSIFICATION:
        return _regression_plots(evaluation, out)
    plots = [_confusion(evaluation, out)]
    for plot in (_roc, _precision_recall, _calibration):
        made = plot(evaluation, out)
        if made:
            plots.append(made)
    return plots


def _importances(
    out: Path,
    spec: Spec,
    model: Any,
    evaluation: Evaluation,
    names: list[str],
    context: dict[str, Any],
    holdout: Any,
) -> tuple[Importances | None, list[str]]:
    """Write importance.json and the importance plots; return the permutation importances
    (None without holdout rows) and the plot file names."""
    plots: list[str] = []
    permuted = None
    if holdout is not None:
        permuted = importance.permutation(
            model,
            holdout,
            evaluation.y_true,
            names,
            context["primary_metric"],
            n_classes=len(evaluation.classes) if evaluation.classes else None,
            seed=spec.split.seed,
        )
        title = "Permutation importance (holdout)"
        plots.append(_importance_plot(permuted, out, "feature_importances.png", title))
    own = importance.built_in(model, names)
    if own is not None:
        title = "The estimator's own importances (secondary: biased to many-valued inputs)"
        plots.append(_importance_plot(own, out, "model_importances.png", title))
    (out / "importance.json").write_text(
        json.dumps(
            {
                "permutation": permuted.to_json() if permuted else None,
                "model": own.to_json() if own else None,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return permuted, plots


def _card_facts(spec: Spec, task: Task, context: dict[str, Any]) -> CardFacts:
    return CardFacts(
        name=spec.name,
        description=spec.description or "",
        task=task,
        estimator=spec.estimator.class_,
        params=dict(spec.estimator.params),
        origin=context["origin"],
        fingerprint=context["fingerprint"],
        n_train=context["n_train"],
        n_test=context["n_test"],
        test_size=spec.split.test_size,
        seed=spec.split.seed,
        target=spec.dataset.target,
        classes=context.get("classes"),
        primary_metric=context["primary_metric"],
        tolerance=spec.evaluation.tolerance,
        impute=spec.preprocessing.impute,
        data_notes=tuple(context.get("data_notes") or ()),
    )

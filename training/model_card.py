"""The Markdown model card of a version: what it is, how well it did, and what the service does
with the inputs it is sent.

The "Inputs the service accepts" section states the service's rules (serving/codecs/schemas.py for
the REST API, serving/codecs/oip/signature.py for the Open Inference Protocol,
serving/observe/drift.py for out-of-range warnings, training/csv_rows.py for bulk scoring);
tests check each statement
against that code, so the card cannot drift from it silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving.store import Feature, FeatureKind, OnnxExport, Task
from training.importance import Importances
from training.onnx_export import summary

BASELINE_PREFIX = "baseline_"
CV_PREFIX = "cv_"

UNSEEN_CATEGORY_RULE = (
    "A categorical value not seen in training is **refused**, not ignored: the REST API "
    "answers 422 (the error names the feature and the allowed categories), the Open Inference "
    "Protocol endpoint 400, and bulk scoring writes the row to its errors file instead of "
    "scoring it."
)
OUT_OF_RANGE_RULE = (
    "A numeric, integer or boolean value outside its training range is **predicted anyway**: "
    "the response carries a `warnings` list naming the feature, the model's drift report "
    "(`GET /models/{name}/drift`) counts it, and bulk scoring prints how many rows had one. "
    "Such predictions are extrapolations and may be unreliable."
)


@dataclass(frozen=True)
class CardFacts:
    """What the card says about a version, besides its features and metrics."""

    name: str
    description: str
    task: Task
    estimator: str
    params: dict[str, Any]
    origin: str
    fingerprint: str
    n_train: int
    n_test: int
    test_size: float
    seed: int
    target: str
    classes: list[Any] | None
    primary_metric: str
    tolerance: float
    impute: str
    data_notes: tuple[str, ...] = ()
    """More about the data (which traffic, the holdout), one bullet each."""


def _missing_rule(features: list[Feature], impute: str) -> str:
    nullable = [f"`{f.name}`" for f in features if f.nullable]
    refused = (
        "A missing value (JSON `null`; an empty cell in bulk scoring) is **refused** for a "
        "feature that had none in training"
    )
    if not nullable:
        return refused + " — that is every feature of this model."
    numeric = [f"`{f.name}`" for f in features if f.nullable and f.kind != FeatureKind.CATEGORICAL]
    categorical = [
        f"`{f.name}`" for f in features if f.nullable and f.kind == FeatureKind.CATEGORICAL
    ]
    filled = []
    if numeric:
        filled.append(f"{', '.join(numeric)} by the training {impute}")
    if categorical:
        filled.append(f"{', '.join(categorical)} as their own 'missing' category")
    return (
        refused
        + f". It is accepted for {', '.join(nullable)} (missing in training), and filled in: "
        + "; ".join(filled)
        + "."
    )


def input_rules(features: list[Feature], impute: str) -> list[str]:
    """The card's statements about inputs, one bullet each."""
    rules = [
        "Every feature must be given; unknown fields are refused. Numbers must be finite, "
        "integers whole numbers (49 or 49.0, not 49.5), booleans true/false.",
        _missing_rule(features, impute),
        OUT_OF_RANGE_RULE,
    ]
    if any(f.kind == FeatureKind.CATEGORICAL for f in features):
        rules.insert(1, UNSEEN_CATEGORY_RULE)
    return [f"- {rule}" for rule in rules]


def _feature_table(features: list[Feature]) -> list[str]:
    lines = [
        "| feature | kind | training range / categories | missing allowed |",
        "|---|---|---|---|",
    ]
    for f in features:
        if f.kind == FeatureKind.CATEGORICAL:
            span = ", ".join(f.categories or [])
        else:
            span = f"{f.min:g} … {f.max:g} (mean {f.mean:.3g}, std {f.std:.3g})"
        lines.append(f"| `{f.name}` | {f.kind.value} | {span} | {'yes' if f.nullable else 'no'} |")
    return lines


def _is_comparison(key: str) -> bool:
    return key.startswith((BASELINE_PREFIX, CV_PREFIX))


def holdout_rows(metrics: dict[str, float]) -> list[str]:
    return [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()) if not _is_comparison(k)]


def comparison_rows(
    metrics: dict[str, float], extra_rows: Sequence[Sequence[str]] = ()
) -> list[str]:
    """The "Baseline and cross-validation" table: per holdout metric, its baseline on the
    holdout (``baseline_<metric>``, with the baseline's cross-validation
    ``baseline_cv_<metric>_mean`` ± ``_std`` where present) and the model's cross-validation
    (``cv_<metric>_mean`` ± ``cv_<metric>_std``), then ``extra_rows`` as given (cells: metric,
    holdout, baseline, cross-validation). Empty when there is nothing to show."""

    def spread(prefix: str, key: str) -> str:
        mean = metrics.get(f"{prefix}{key}_mean")
        std = metrics.get(f"{prefix}{key}_std")
        if mean is None:
            return ""
        return f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")

    rows: list[str] = []
    known: set[str] = set()
    for key, value in sorted(metrics.items()):
        if _is_comparison(key):
            continue
        names = {
            f"{BASELINE_PREFIX}{key}",
            *(
                f"{p}{key}_{s}"
                for p in (CV_PREFIX, f"{BASELINE_PREFIX}{CV_PREFIX}")
                for s in ("mean", "std")
            ),
        }
        known |= names
        if not names & set(metrics):
            continue
        baseline = metrics.get(f"{BASELINE_PREFIX}{key}")
        base = "" if baseline is None else f"{baseline:.4f}"
        base_cv = spread(f"{BASELINE_PREFIX}{CV_PREFIX}", key)
        if base_cv:
            base = f"{base} (cross-validation {base_cv})".strip()
        rows.append(f"| {key} | {value:.4f} | {base} | {spread(CV_PREFIX, key)} |")
    for key, value in sorted(metrics.items()):  # comparison figures of no holdout metric
        if _is_comparison(key) and key not in known:
            rows.append(f"| {key} |  | {value:.4f} |  |")
    rows.extend("| " + " | ".join(cells) + " |" for cells in extra_rows)
    if not rows:
        return []
    return [
        "| metric | holdout | baseline | cross-validation (mean ± std) |",
        "|---|---|---|---|",
        *rows,
    ]


def _importance_lines(importances: Importances | None) -> list[str]:
    if importances is None:
        return []
    top = importances.ranked()[:10]
    spread = importances.spread or {}
    lines = [
        f"Permutation importance: {importances.kind} (mean ± std over shuffles; "
        "near zero or negative means the model does not rely on it).",
        "",
        "| feature | importance |",
        "|---|---|",
    ]
    for name, value in top:
        lines.append(f"| `{name}` | {value:.4f} ± {spread.get(name, 0.0):.4f} |")
    return [*lines, ""]


def runtime_lines(onnx: OnnxExport | None) -> list[str]:
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
    return [
        f"scikit-learn: no ONNX compilation ({onnx.status}: {summary(onnx)}). "
        "The full message is in manifest.json, `onnx.reason`."
    ]


def render(
    facts: CardFacts,
    *,
    metrics: dict[str, float],
    features: list[Feature],
    plots: list[str],
    onnx: OnnxExport | None,
    importances: Importances | None,
    extra_comparison_rows: Sequence[Sequence[str]] = (),
) -> str:
    """The card's Markdown. ``extra_comparison_rows``: more rows for the "Baseline and
    cross-validation" table (see :func:`comparison_rows`)."""
    comparison = comparison_rows(metrics, extra_comparison_rows)
    card = [
        f"# Model card: {facts.name}",
        "",
        facts.description,
        "",
        f"- Task: {facts.task.value}",
        f"- Estimator: `{facts.estimator}` with params `{facts.params}`",
        f"- Data: {facts.origin} (sha256 `{facts.fingerprint[:16]}…`)",
        f"- Rows: {facts.n_train} train, {facts.n_test} holdout "
        f"(test size {facts.test_size}, seed {facts.seed})"
        if not facts.data_notes
        else f"- Rows: {facts.n_train} train, {facts.n_test} holdout",
        *(f"- {note}" for note in facts.data_notes),
        f"- Target: `{facts.target}`" + (f", classes {facts.classes}" if facts.classes else ""),
        "",
        "## Holdout metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *holdout_rows(metrics),
        "",
        f"Primary metric for promotion: **{facts.primary_metric}** (tolerance {facts.tolerance}).",
        "",
    ]
    if comparison:
        card += ["## Baseline and cross-validation", "", *comparison, ""]
    card += [
        "## Features",
        "",
        *_feature_table(features),
        "",
        "## Inputs the service accepts",
        "",
        *input_rules(features, facts.impute),
        "",
        "## What the model relies on",
        "",
        *_importance_lines(importances),
        "## Plots",
        "",
        *[f"![{p.removesuffix('.png').replace('_', ' ')}]({p})" for p in plots],
        "",
        "## Serving runtime",
        "",
        *runtime_lines(onnx),
        "",
    ]
    return "\n".join(card)

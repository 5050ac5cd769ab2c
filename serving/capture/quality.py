"""Live quality: how well one model version's captured predictions match the labels
applications sent back, next to the holdout score its manifest recorded.

:func:`live_quality` computes, over the last N labelled rows and over the rows predicted in
the hour and the day before ``now``: classifiers' accuracy, macro F1 and ROC AUC, regressors'
MAE, RMSE and R², with scikit-learn's metric functions (training scores the holdout with the
same ones, see ``training/evaluate.py``); the number of labelled rows and the median delay of
their labels. The manifest's primary metric, computed live on the last N rows, decides whether
the version is ``degraded``. :class:`DegradedWatch` remembers that flag per version so a caller
logs a change once. Pure domain code: no web framework, no database access; the caller reads
the rows (:meth:`serving.capture.store.CaptureStore.rows`) and serialises the report (every
number is finite or None, so JSON never sees NaN).

Labels compare as the JSON values they are: numbers by value (``1`` is ``1.0``), but text is
never a number and a boolean never a number (``"1"`` is not the class ``1``). A classifier's
label that is none of its classes is a wrong prediction (for macro F1, a class of its own that
is never predicted, as scikit-learn would count it) and is counted in ``unmatched_labels`` so a
client sending the wrong type shows; ROC AUC leaves such rows out. A regressor's label that is
not a number has no error to measure: it is counted and left out of the metrics.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from serving.capture.records import CapturedRow
from serving.store import Manifest, Task

LAST_N = "last_n"
"""The window of the last N labelled rows (by prediction time); the one ``degraded`` judges."""
TIME_WINDOWS: dict[str, float] = {"1h": 3600.0, "24h": 86400.0}
"""Time windows: rows predicted at ``now - seconds <= ts <= now``."""

CLASSIFIER_METRICS = ("accuracy", "f1_macro", "roc_auc")
REGRESSOR_METRICS = ("mae", "rmse", "r2")

LIVE_METRICS: dict[str, tuple[str, float]] = {
    "accuracy": ("accuracy", 1.0),
    "f1_macro": ("f1_macro", 1.0),
    "roc_auc": ("roc_auc", 1.0),
    "r2": ("r2", 1.0),
    "rmse": ("rmse", 1.0),
    "mae": ("mae", 1.0),
    # scikit-learn's scorer names (training.evaluate.SCORERS), errors negated there.
    "neg_root_mean_squared_error": ("rmse", -1.0),
    "neg_mean_absolute_error": ("mae", -1.0),
}
"""A manifest's metric name -> (the live metric computing it, the sign to apply)."""

Status = Literal[
    "ok", "degraded", "not_enough_rows", "unsupported_metric", "no_holdout", "undefined"
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class WindowQuality:
    """The metrics of one window of labelled rows."""

    rows: int
    """Labelled rows in the window."""
    scored: int
    """Rows the metrics use: all of them for a classifier, those labelled with a number for a
    regressor."""
    unmatched_labels: int
    """Labels that are none of the classifier's classes, or not a number for a regressor."""
    median_label_delay_s: float | None
    """Median of (label arrival - prediction time), seconds."""
    metrics: dict[str, float | None]
    """By the names the manifest uses; None where undefined (no rows, one class only for ROC
    AUC, a row without probabilities for ROC AUC, fewer than 2 rows or constant labels for R²)."""


@dataclass(frozen=True, slots=True)
class QualityReport:
    """Live quality of one model version next to its holdout score."""

    model: str
    version: int
    task: str
    primary_metric: str
    higher_is_better: bool
    holdout: float | None
    """The manifest's value of the primary metric (None when it has none)."""
    live: float | None
    """The primary metric over the ``last_n`` window (None when not computable)."""
    shortfall: float | None
    """How much worse live is than holdout (positive: worse), in the metric's units."""
    enough_rows: bool
    """The ``last_n`` window scored at least ``min_rows`` rows."""
    degraded: bool
    status: Status
    reason: str | None
    """Why the status is what it is, for people; None when ok."""
    windows: dict[str, WindowQuality]
    """``last_n``, ``1h`` and ``24h``."""


@dataclass(frozen=True, slots=True)
class _Columns:
    """One version's labelled rows as arrays (classes as positions, or values)."""

    ts: FloatArray
    delay: FloatArray
    truth: npt.NDArray[Any]
    """Classifiers: class positions (unmatched labels: positions from ``classes`` up);
    regressors: values (NaN where unmatched)."""
    predicted: npt.NDArray[Any]
    matched: BoolArray
    proba: FloatArray | None
    """Classifiers: one column per class; rows without probabilities are NaN."""


def live_quality(
    manifest: Manifest,
    rows: Iterable[CapturedRow],
    *,
    now: float,
    last_n: int,
    tolerance: float,
    min_rows: int,
) -> QualityReport:
    """The live quality of ``manifest``'s version from captured ``rows``.

    ``rows`` may hold other versions, other models and unlabelled rows (all ignored); pass at
    least the last ``last_n`` labelled rows and those predicted in the day before ``now``.
    ``degraded``: the primary metric over the last ``last_n`` rows is worse than the holdout by
    more than ``tolerance`` (absolute), with at least ``min_rows`` rows scored.
    """
    if last_n < 1 or min_rows < 1 or not tolerance >= 0:
        raise ValueError("last_n and min_rows must be at least 1, tolerance at least 0")
    cols = _columns(manifest, rows)
    newest_first = np.argsort(-cols.ts, kind="stable")
    selections = {LAST_N: newest_first[:last_n]}
    for name, seconds in TIME_WINDOWS.items():
        selections[name] = np.flatnonzero((cols.ts >= now - seconds) & (cols.ts <= now))
    windows = {name: _window(manifest, cols, idx) for name, idx in selections.items()}
    return _judge(manifest, windows[LAST_N], windows, tolerance=tolerance, min_rows=min_rows)


def quality_over_time(
    manifest: Manifest, rows: Iterable[CapturedRow], *, now: float, span_s: float, buckets: int
) -> list[dict[str, Any]]:
    """The primary metric of ``manifest``'s version over ``buckets`` equal slices of the last
    ``span_s`` seconds before ``now`` (by prediction time): ``start``, ``end`` (UTC seconds),
    ``rows`` scored and ``value`` (None when the slice cannot be scored)."""
    if buckets < 1 or not span_s > 0:
        raise ValueError("buckets must be at least 1 and span_s positive")
    cols = _columns(manifest, rows)
    width, start = span_s / buckets, now - span_s
    out = []
    for i in range(buckets):
        low, high = start + i * width, start + (i + 1) * width
        idx = np.flatnonzero(
            (cols.ts >= low) & (cols.ts < high if i < buckets - 1 else cols.ts <= high)
        )
        window = _window(manifest, cols, idx)
        mapped = LIVE_METRICS.get(manifest.primary_metric)  # e.g. neg_root_mean_squared_error
        raw = window.metrics.get(mapped[0]) if mapped is not None and window.scored else None
        value = None if raw is None or mapped is None else _finite(mapped[1] * raw)
        out.append({"start": low, "end": high, "rows": window.scored, "value": value})
    return out


def _judge(
    manifest: Manifest,
    judged: WindowQuality,
    windows: dict[str, WindowQuality],
    *,
    tolerance: float,
    min_rows: int,
) -> QualityReport:
    """Compare the judged window's primary metric with the holdout."""
    name = manifest.primary_metric
    metrics = CLASSIFIER_METRICS if manifest.task == Task.CLASSIFICATION else REGRESSOR_METRICS
    mapped = LIVE_METRICS.get(name)
    supported = mapped is not None and mapped[0] in metrics
    live: float | None = None
    if mapped is not None and supported:
        value = judged.metrics.get(mapped[0])
        live = None if value is None else _finite(mapped[1] * value)
    holdout = _finite(manifest.metrics.get(name))
    enough = judged.scored >= min_rows
    shortfall: float | None = None
    if live is not None and holdout is not None:
        shortfall = _finite(holdout - live if manifest.higher_is_better else live - holdout)
    status: Status
    if not supported:
        status, reason = "unsupported_metric", f"{name} has no live computation for this task"
    elif holdout is None:
        status, reason = "no_holdout", f"the manifest has no finite value of {name}"
    elif not enough:
        status = "not_enough_rows"
        reason = f"not enough labelled rows: {judged.scored} scored, {min_rows} needed"
    elif shortfall is None:
        status, reason = "undefined", f"{name} is undefined on the last {judged.rows} rows"
    elif shortfall > tolerance:
        status = "degraded"
        reason = (
            f"{name} {live:.4g} is {shortfall:.4g} worse than holdout {holdout:.4g} "
            f"(tolerance {tolerance:g})"
        )
    else:
        status, reason = "ok", None
    return QualityReport(
        model=manifest.name,
        version=manifest.version,
        task=manifest.task.value,
        primary_metric=name,
        higher_is_better=manifest.higher_is_better,
        holdout=holdout,
        live=live,
        shortfall=shortfall,
        enough_rows=enough,
        degraded=status == "degraded",
        status=status,
        reason=reason,
        windows=windows,
    )


def _json_key(value: Any) -> Hashable:
    """Equal for JSON-equal values: numbers by value, booleans and text apart from numbers."""
    if isinstance(value, bool):
        return (bool, value)
    if isinstance(value, int | float):
        return (float, value)  # 1 == 1.0 and they hash alike
    if isinstance(value, str):
        return (str, value)
    return (object, orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def probability_key(label: object) -> str:
    """The key of a class in captured probabilities: the rule of
    ``serving.core.loading._class_key`` (text as it is, other labels as JSON writes them),
    restated here so capture does not import the serving core."""
    return label if isinstance(label, str) else orjson.dumps(label).decode()


def _columns(manifest: Manifest, rows: Iterable[CapturedRow]) -> _Columns:
    """The labelled rows of ``manifest``'s version as arrays (the only per-row Python)."""
    mine = [
        r
        for r in rows
        if r.labelled is not None and r.version == manifest.version and r.model == manifest.name
    ]
    ts = np.array([r.ts for r in mine], dtype=np.float64)
    delay = np.array([r.labelled for r in mine], dtype=np.float64) - ts
    if manifest.task == Task.CLASSIFICATION:
        classes = manifest.target.classes or []
        return _class_columns(classes, mine, ts, delay)
    truth = np.array([_number(r.label) for r in mine], dtype=np.float64)
    predicted = np.array([_number(r.prediction) for r in mine], dtype=np.float64)
    matched = ~np.isnan(truth) & ~np.isnan(predicted)
    return _Columns(ts, delay, truth, predicted, matched, None)


def _class_columns(
    classes: Sequence[Any], rows: list[CapturedRow], ts: FloatArray, delay: FloatArray
) -> _Columns:
    k = len(classes)
    codes: dict[Hashable, int] = {_json_key(c): i for i, c in enumerate(classes)}

    def code(value: Any) -> int:
        # A value that is no class gets a position of its own, from k up.
        return codes.setdefault(_json_key(value), len(codes))

    exact = {(type(c), c): i for i, c in enumerate(classes)}
    truth = _codes([r.label for r in rows], exact, code)
    predicted = _codes([r.prediction for r in rows], exact, code)
    proba = _probability_table([r.probabilities for r in rows], classes)
    return _Columns(ts, delay, truth, predicted, truth < k, proba)


def _codes(
    values: list[Any], exact: dict[tuple[type, Any], int], code: Callable[[Any], int]
) -> IntArray:
    """Class positions of ``values``: values of a class's very type found in one dict lookup
    each, the others (``1.0`` for ``1``, unknown labels) through ``code``."""
    try:
        found = [exact.get((v.__class__, v), -1) for v in values]
    except TypeError:  # an unhashable value (a JSON array or object)
        found = [-1] * len(values)
    out = np.array(found, dtype=np.int64)
    for i in np.flatnonzero(out < 0).tolist():
        out[i] = code(values[i])
    return out


def _probability_table(given: list[dict[str, float] | None], classes: Sequence[Any]) -> FloatArray:
    """One column per class, in manifest order; NaN on rows whose probabilities are missing,
    lack a class or are not numbers."""
    k = len(classes)
    if k < 2:
        return np.full((len(given), k), math.nan)
    pick = operator.itemgetter(*(probability_key(c) for c in classes))
    missing = (None,) * k

    def one(p: dict[str, float] | None) -> tuple[Any, ...]:
        if p is None:
            return missing
        try:
            values: tuple[Any, ...] = pick(p)
        except (KeyError, TypeError):
            return missing
        return values

    table = [one(p) for p in given]
    try:
        return np.array(table, dtype=np.float64).reshape(len(given), k)  # None is NaN
    except (TypeError, ValueError):  # text or nested values: those rows are unusable
        return np.array([_floats(row) for row in table], dtype=np.float64).reshape(len(given), k)


def _floats(values: tuple[Any, ...]) -> list[float]:
    numbers = [_number(v) for v in values]
    return [math.nan] * len(values) if any(math.isnan(v) for v in numbers) else numbers


def _number(value: Any) -> float:
    """A JSON number as a float; NaN for anything else (text, booleans, null)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _window(manifest: Manifest, cols: _Columns, idx: IntArray) -> WindowQuality:
    matched = cols.matched[idx]
    unmatched = int(idx.size - np.count_nonzero(matched))
    delay = _finite(float(np.median(cols.delay[idx]))) if idx.size else None
    if manifest.task == Task.CLASSIFICATION:
        k = len(manifest.target.classes or [])
        metrics = _classifier_metrics(cols, idx, k)
        scored = int(idx.size)
    else:
        used = idx[matched]
        metrics = _regressor_metrics(cols.truth[used], cols.predicted[used])
        scored = int(used.size)
    return WindowQuality(int(idx.size), scored, unmatched, delay, metrics)


def _classifier_metrics(cols: _Columns, idx: IntArray, k: int) -> dict[str, float | None]:
    if idx.size == 0:
        return dict.fromkeys(CLASSIFIER_METRICS)
    from sklearn import metrics as skm  # heavy; imported when a report is asked for

    truth, predicted = cols.truth[idx], cols.predicted[idx]
    auc: float | None = None
    if cols.proba is not None:
        proba = cols.proba[idx]
        if not np.isnan(proba).any():  # probabilities for every row of the window
            known = cols.matched[idx]
            auc = _roc_auc(truth[known], proba[known], k)
    return {
        "accuracy": _finite(skm.accuracy_score(truth, predicted)),
        "f1_macro": _finite(skm.f1_score(truth, predicted, average="macro", zero_division=0)),
        "roc_auc": auc,
    }


def _roc_auc(truth: IntArray, proba: FloatArray, k: int) -> float | None:
    """As training computes it: binary, the second class's probability; multiclass, macro
    one-vs-rest over every class. Undefined (None) unless every class has a label."""
    if k < 2 or np.unique(truth).size < k:
        return None
    from sklearn.metrics import roc_auc_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an undefined score is None here, not a warning
        try:
            if k == 2:
                return _finite(roc_auc_score(truth == 1, proba[:, 1]))
            return _finite(roc_auc_score(truth, proba, multi_class="ovr", labels=list(range(k))))
        except ValueError:  # e.g. probabilities that do not sum to 1
            return None


def _regressor_metrics(truth: FloatArray, predicted: FloatArray) -> dict[str, float | None]:
    if truth.size == 0:
        return dict.fromkeys(REGRESSOR_METRICS)
    from sklearn import metrics as skm

    with np.errstate(over="ignore", invalid="ignore"):
        r2 = None
        if truth.size >= 2 and np.ptp(truth) > 0:
            r2 = _finite(skm.r2_score(truth, predicted))
        return {
            "mae": _finite(skm.mean_absolute_error(truth, predicted)),
            "rmse": _finite(math.sqrt(skm.mean_squared_error(truth, predicted))),
            "r2": r2,
        }


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class DegradedWatch:
    """The latest report of each model version, to tell when its ``degraded`` flag changes.

    A version first seen healthy is no change (there was nothing to recover from). Reports are
    computed in several threads at once (periodically and on request); one computed before the
    latest recorded (``at``) changes nothing, or a late report could flip the flag back."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, int], tuple[float, QualityReport]] = {}

    def changed(self, report: QualityReport, at: float) -> bool:
        """Record ``report`` (computed at ``at``); True when its flag differs from the one
        recorded before."""
        key = (report.model, report.version)
        seen = self._latest.get(key)
        if seen is not None and at < seen[0]:
            return False
        self._latest[key] = (at, report)
        return (seen is not None and seen[1].degraded) != report.degraded

    def latest(self) -> dict[tuple[str, int], QualityReport]:
        return {key: report for key, (_, report) in self._latest.items()}

    def degraded(self, model: str, version: int) -> bool:
        seen = self._latest.get((model, version))
        return seen is not None and seen[1].degraded

    def forget(self, model: str, version: int) -> None:
        """Drop a version no longer served (its report would otherwise stay forever)."""
        self._latest.pop((model, version), None)


def row_scores(
    manifest: Manifest, rows: Iterable[CapturedRow]
) -> tuple[list[tuple[str, int]], FloatArray]:
    """Each labelled row of ``manifest``'s version, keyed ``(request_id, row)``, and its score:
    1.0 for a classifier's right prediction and 0.0 for a wrong one, or a regressor's absolute
    error (rows labelled with no number are left out). For tests of significance."""
    mine = [
        r
        for r in rows
        if r.labelled is not None and r.version == manifest.version and r.model == manifest.name
    ]
    cols = _columns(manifest, mine)
    keys = [(r.request_id, r.row) for r in mine]
    if manifest.task == Task.CLASSIFICATION:
        return keys, (cols.truth == cols.predicted).astype(np.float64)
    used = np.flatnonzero(cols.matched)
    errors = np.abs(cols.truth[used] - cols.predicted[used])
    return [keys[i] for i in used.tolist()], errors

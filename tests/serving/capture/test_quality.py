"""Live quality from labelled captured rows: hand-computed metrics, windows, degraded flags."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from typing import Any

import orjson
import pytest
from sklearn import metrics as skm
from sqlalchemy import Engine

from serving.capture.quality import (
    LIVE_METRICS,
    DegradedWatch,
    QualityReport,
    live_quality,
    probability_key,
    quality_over_time,
)
from serving.capture.records import CapturedRow, Label
from serving.capture.store import CaptureStore
from serving.core.loading import _class_key
from serving.store import Manifest, Target
from tests.serving.capture.records import NOW, captured, manifest, regressor, row
from training.evaluate import SCORERS


def binary(prediction: str, label: str, dear: float, **kw: Any) -> CapturedRow:
    return row(prediction, label, proba={"cheap": 1 - dear, "dear": dear}, **kw)


# truth dear, dear, cheap, cheap; predicted dear, cheap, cheap, cheap.
# accuracy 3/4; F1 dear: P 1, R 1/2 -> 2/3; cheap: P 2/3, R 1 -> 4/5; macro 11/15.
# AUC of dear: positives 0.9, 0.4 against negatives 0.3, 0.6: 3 of 4 pairs ordered -> 3/4.
FOUR = [
    binary("dear", "dear", 0.9),
    binary("cheap", "dear", 0.4),
    binary("cheap", "cheap", 0.3),
    binary("cheap", "cheap", 0.6),
]


def report(m: Manifest, rows: list[CapturedRow], **kw: Any) -> QualityReport:
    params: dict[str, Any] = {"now": NOW, "last_n": 1000, "tolerance": 0.05, "min_rows": 1}
    params.update(kw)
    return live_quality(m, rows, **params)


def finite_tree(report: QualityReport) -> None:
    """Every number finite: the standard encoder refuses NaN and infinities."""
    json.dumps(dataclasses.asdict(report), allow_nan=False)


def test_binary_classifier_metrics_by_hand() -> None:
    r = report(manifest(), FOUR)
    for window in ("last_n", "1h", "24h"):
        w = r.windows[window]
        assert (w.rows, w.scored, w.unmatched_labels) == (4, 4, 0)
        assert w.metrics["accuracy"] == 0.75
        assert w.metrics["f1_macro"] == pytest.approx(11 / 15, abs=1e-12)
        assert w.metrics["roc_auc"] == 0.75
        assert w.median_label_delay_s == 10.0
    assert (r.model, r.version, r.task) == ("houses", 1, "classification")
    # scikit-learn on the raw labels is the reference.
    truth = [x.label for x in FOUR]
    predicted = [x.prediction for x in FOUR]
    assert r.windows["last_n"].metrics["f1_macro"] == skm.f1_score(
        truth, predicted, average="macro", zero_division=0
    )


def test_primary_metric_next_to_holdout_and_degraded() -> None:
    r = report(manifest(), FOUR, tolerance=0.05)  # holdout f1_macro 0.8, live 11/15
    assert (r.primary_metric, r.holdout, r.higher_is_better) == ("f1_macro", 0.8, True)
    assert r.live == pytest.approx(11 / 15)
    assert r.shortfall == pytest.approx(0.8 - 11 / 15)
    assert (r.degraded, r.status, r.enough_rows) == (True, "degraded", True)
    assert r.reason is not None
    assert "f1_macro" in r.reason
    ok = report(manifest(), FOUR, tolerance=0.1)
    assert (ok.degraded, ok.status, ok.reason) == (False, "ok", None)


def test_not_enough_rows_is_never_degraded() -> None:
    r = report(manifest(), FOUR, tolerance=0.0, min_rows=5)
    assert (r.degraded, r.status, r.enough_rows) == (False, "not_enough_rows", False)
    assert r.live == pytest.approx(11 / 15)  # still shown
    assert r.reason == "not enough labelled rows: 4 scored, 5 needed"
    at_limit = report(manifest(), FOUR, tolerance=0.0, min_rows=4)
    assert (at_limit.degraded, at_limit.enough_rows) == (True, True)


def test_no_rows_at_all() -> None:
    r = report(manifest(), [], min_rows=1)
    w = r.windows["last_n"]
    assert (w.rows, w.scored, w.median_label_delay_s) == (0, 0, None)
    assert w.metrics == {"accuracy": None, "f1_macro": None, "roc_auc": None}
    assert (r.live, r.status, r.degraded) == (None, "not_enough_rows", False)
    finite_tree(r)


def test_time_windows_by_prediction_time_with_inclusive_edges() -> None:
    rows = [
        binary("dear", "dear", 0.9, ts=NOW - 3600),  # in 1 h (edge)
        binary("dear", "cheap", 0.8, ts=NOW - 3601),  # 24 h only
        binary("cheap", "cheap", 0.2, ts=NOW - 86400),  # 24 h (edge)
        binary("cheap", "dear", 0.1, ts=NOW - 86401),  # too old for either
        binary("dear", "dear", 0.7, ts=NOW + 1),  # after now: in no time window
        binary("cheap", "dear", 0.3, ts=NOW, delay=None),  # not labelled: nowhere
    ]
    r = report(manifest(), rows, last_n=2)
    assert r.windows["1h"].rows == 1
    assert r.windows["1h"].metrics["accuracy"] == 1.0
    assert r.windows["24h"].rows == 3
    assert r.windows["24h"].metrics["accuracy"] == pytest.approx(2 / 3)
    # The two newest labelled predictions, whatever their age.
    last = r.windows["last_n"]
    assert last.rows == 2
    assert last.metrics["accuracy"] == 1.0  # NOW + 1 and NOW - 3600, both right


def test_last_n_takes_the_newest_predictions_in_any_input_order() -> None:
    rows = [row("dear", "dear", ts=NOW - i, proba=None) for i in range(5)]
    rows += [row("dear", "cheap", ts=NOW - 100 - i, proba=None) for i in range(5)]
    rows.reverse()
    assert report(manifest(), rows, last_n=5).windows["last_n"].metrics["accuracy"] == 1.0
    assert report(manifest(), rows, last_n=10).windows["last_n"].metrics["accuracy"] == 0.5


def test_median_label_delay() -> None:
    rows = [row("dear", "dear", ts=NOW - 10 * i, delay=d) for i, d in enumerate([60, 10, 20])]
    assert report(manifest(), rows).windows["1h"].median_label_delay_s == 20.0
    rows.append(row("dear", "dear", ts=NOW - 50, delay=30))
    assert report(manifest(), rows).windows["1h"].median_label_delay_s == 25.0


def test_one_class_window_has_no_auc_and_no_warning() -> None:
    rows = [binary("dear", "dear", 0.9), binary("cheap", "dear", 0.4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = report(manifest(), rows)
    w = r.windows["last_n"]
    assert w.metrics["roc_auc"] is None
    assert w.metrics["accuracy"] == 0.5
    finite_tree(r)


def test_auc_needs_probabilities_on_every_row_of_the_window() -> None:
    rows = [*FOUR, row("dear", "cheap", ts=NOW - 7200, proba=None)]
    r = report(manifest(), rows)
    assert r.windows["1h"].metrics["roc_auc"] == 0.75
    assert r.windows["24h"].metrics["roc_auc"] is None
    assert r.windows["24h"].metrics["accuracy"] == 0.6


def test_auc_as_primary_metric_undefined_on_one_class() -> None:
    m = manifest().model_copy(update={"metrics": {"roc_auc": 0.9}, "primary_metric": "roc_auc"})
    one_class = [binary("dear", "dear", 0.9), binary("cheap", "dear", 0.4)]
    r = report(m, one_class)
    assert (r.live, r.status, r.degraded, r.enough_rows) == (None, "undefined", False, True)
    r = report(m, FOUR, tolerance=0.1)
    assert (r.live, r.status, r.degraded) == (0.75, "degraded", True)


def test_multiclass_auc_is_macro_one_vs_rest_over_the_manifest_classes() -> None:
    m = manifest().model_copy(update={"target": Target(name="grade", classes=[0, 1, 2])})

    def three(prediction: int, label: int, p: list[float]) -> CapturedRow:
        return row(prediction, label, proba=dict(zip(["0", "1", "2"], p, strict=True)))

    # Classes 0 and 1: their one positive scores above every other row -> 1 each. Class 2:
    # positives 0.7, 0.3 against negatives 0.1, 0.3: 0.7>0.1, 0.7>0.3, 0.3>0.1, a tie (1/2)
    # -> 7/8. Macro: (1 + 1 + 7/8) / 3 = 23/24.
    rows = [
        three(0, 0, [0.6, 0.3, 0.1]),
        three(1, 1, [0.2, 0.5, 0.3]),
        three(2, 2, [0.1, 0.2, 0.7]),
        three(1, 2, [0.3, 0.4, 0.3]),
    ]
    w = report(m, rows).windows["last_n"]
    assert w.metrics["roc_auc"] == pytest.approx(23 / 24, abs=1e-12)
    assert w.metrics["accuracy"] == 0.75
    # Two of the three classes labelled: undefined, as training leaves it out.
    assert report(m, rows[:2]).windows["last_n"].metrics["roc_auc"] is None


def test_labels_compare_as_json_values() -> None:
    m = manifest().model_copy(update={"target": Target(name="y", classes=[0, 1])})
    rows = [
        row(1, 1.0),  # the same JSON number: right
        row(1, "1"),  # text is not the number: wrong, and not a class
        row(1, True),  # nor is a boolean
        row(0, None),  # a null label
    ]
    w = report(m, rows).windows["last_n"]
    assert w.metrics["accuracy"] == 0.25
    assert (w.rows, w.scored, w.unmatched_labels) == (4, 4, 3)
    # F1 counts each unknown label as a class of its own, never predicted (F1 0), as
    # scikit-learn counts any label: classes 1 (P 1/3, R 1 -> 1/2), 0 (0), "1", true, null (0).
    assert w.metrics["f1_macro"] == pytest.approx(0.5 / 5)


def test_unmatched_labels_are_left_out_of_auc() -> None:
    rows = [*FOUR, binary("cheap", "expensive", 0.99)]
    w = report(manifest(), rows).windows["last_n"]
    assert w.metrics["roc_auc"] == 0.75
    assert w.metrics["accuracy"] == 0.6
    assert w.unmatched_labels == 1


def test_regressor_metrics_by_hand() -> None:
    # Errors 0, 0, 0, -2: MAE 1/2, RMSE 1; labels' variance sum 5 -> R² 1 - 4/5.
    rows = [row(p, t, model="prices") for p, t in [(1, 1), (2.0, 2), (3, 3.0), (2, 4)]]
    r = report(regressor(), rows)
    w = r.windows["last_n"]
    assert w.metrics == {"mae": 0.5, "rmse": 1.0, "r2": pytest.approx(0.2)}
    assert (w.rows, w.scored, w.unmatched_labels) == (4, 4, 0)
    # rmse is lower-better: live 1.0 against holdout 2.0 is fine.
    assert (r.primary_metric, r.live, r.holdout, r.shortfall) == ("rmse", 1.0, 2.0, -1.0)
    assert (r.status, r.degraded) == ("ok", False)
    worse = [row(p, t, model="prices") for p, t in [(1, 5), (2, -2), (3, 7)]]  # RMSE 4
    r = report(regressor(), worse, tolerance=1.5)
    assert (r.live, r.shortfall, r.status, r.degraded) == (4.0, 2.0, "degraded", True)
    at_tolerance = report(regressor(), worse, tolerance=2.0)  # "more than" the tolerance
    assert (at_tolerance.status, at_tolerance.degraded) == ("ok", False)


def test_regressor_r2_needs_two_rows_and_varying_labels() -> None:
    one = report(regressor(), [row(1.0, 2.0, model="prices")]).windows["last_n"]
    assert one.metrics == {"mae": 1.0, "rmse": 1.0, "r2": None}
    constant = [row(p, 3.0, model="prices") for p in (1.0, 3.0)]
    assert report(regressor(), constant).windows["last_n"].metrics["r2"] is None


def test_regressor_labels_that_are_not_numbers_are_counted_and_left_out() -> None:
    rows = [row(1.0, 2.0, model="prices"), row(1.0, "2", model="prices")]
    rows += [row(1.0, True, model="prices"), row(1.0, None, model="prices")]
    w = report(regressor(), rows).windows["last_n"]
    assert (w.rows, w.scored, w.unmatched_labels) == (4, 1, 3)
    assert w.metrics["mae"] == 1.0
    r = report(regressor(), rows, min_rows=2)
    assert (r.status, r.enough_rows) == ("not_enough_rows", False)


def test_huge_errors_give_none_not_infinity() -> None:
    rows = [row(-1e308, 1e308, model="prices"), row(1e308, -1e308, model="prices")]
    r = report(regressor(), rows)
    assert r.windows["last_n"].metrics["rmse"] is None
    finite_tree(r)


def test_scikit_learn_scorer_names_are_negated_errors() -> None:
    m = regressor().model_copy(
        update={
            "metrics": {"neg_mean_absolute_error": -1.5},
            "primary_metric": "neg_mean_absolute_error",
            "higher_is_better": True,
        }
    )
    rows = [row(1.0, 2.0, model="prices"), row(1.0, 4.0, model="prices")]  # MAE 2
    r = report(m, rows, tolerance=0.25)
    assert (r.live, r.holdout, r.shortfall, r.degraded) == (-2.0, -1.5, 0.5, True)


@pytest.mark.parametrize(
    ("m", "status"),
    [
        (manifest().model_copy(update={"metrics": {"brier": 0.1}, "primary_metric": "brier"}), 0),
        (manifest().model_copy(update={"metrics": {"r2": 0.9}, "primary_metric": "r2"}), 0),
        (manifest().model_copy(update={"metrics": {}}), 1),
        (manifest().model_copy(update={"metrics": {"f1_macro": math.nan}}), 1),
    ],
)
def test_metrics_that_cannot_be_judged_are_said_so(m: Manifest, status: int) -> None:
    r = report(m, FOUR, tolerance=0.0)
    assert r.status == ("unsupported_metric", "no_holdout")[status]
    assert (r.degraded, r.shortfall) == (False, None)
    assert r.reason is not None
    finite_tree(r)


def test_other_versions_models_and_unlabelled_rows_are_ignored() -> None:
    rows = [
        *FOUR,
        binary("dear", "cheap", 0.9, version=2),
        binary("dear", "cheap", 0.9, model="flats"),
        binary("dear", "cheap", 0.9, delay=None),
    ]
    assert report(manifest(), rows).windows["last_n"].rows == 4


def test_report_serialises_to_json() -> None:
    r = report(manifest(), FOUR)
    data = orjson.loads(orjson.dumps(r))
    assert data["windows"]["1h"]["metrics"]["roc_auc"] == 0.75
    assert data["status"] == "degraded"
    assert data == json.loads(json.dumps(dataclasses.asdict(r), allow_nan=False))


def test_from_the_capture_store(engine: Engine) -> None:
    store = CaptureStore(engine)
    store.write([captured("a", rows=4, ts=NOW - 30)])  # predicted dear, cheap, dear, cheap
    labels = [Label("a", i, y) for i, y in enumerate(["dear", "dear", "cheap", "cheap"])]
    store.record_labels("houses", labels, now=NOW)
    rows = store.rows("houses", labelled_only=True, since=NOW - 86400)
    w = report(manifest(), rows).windows["1h"]
    assert (w.rows, w.median_label_delay_s, w.metrics["accuracy"]) == (4, 30.0, 0.5)
    assert w.metrics["roc_auc"] == 0.5  # every row 0.75 for dear: ties only


def test_invalid_parameters() -> None:
    for bad in ({"last_n": 0}, {"min_rows": 0}, {"tolerance": -0.1}, {"tolerance": math.nan}):
        with pytest.raises(ValueError, match="at least"):
            report(manifest(), FOUR, **bad)


def test_degraded_watch_tells_each_change_once() -> None:
    watch = DegradedWatch()
    healthy = report(manifest(), FOUR, tolerance=0.1)
    degraded = report(manifest(), FOUR, tolerance=0.0)
    assert not watch.changed(healthy, 1.0)  # first seen healthy: nothing to tell
    assert watch.changed(degraded, 2.0)
    assert watch.degraded("houses", 1)
    assert not watch.changed(degraded, 3.0)
    assert watch.changed(healthy, 4.0)
    assert not watch.changed(healthy, 5.0)
    assert not watch.degraded("houses", 1)
    assert watch.latest() == {("houses", 1): healthy}
    other = dataclasses.replace(degraded, version=2)
    assert watch.changed(other, 6.0)  # versions are watched apart
    assert not watch.degraded("houses", 1)
    watch.forget("houses", 2)
    assert not watch.degraded("houses", 2)
    assert watch.changed(other, 7.0)


def test_a_report_computed_before_the_latest_changes_nothing() -> None:
    watch = DegradedWatch()
    healthy = report(manifest(), FOUR, tolerance=0.1)
    degraded = report(manifest(), FOUR, tolerance=0.0)
    assert watch.changed(degraded, 10.0)
    assert not watch.changed(healthy, 9.0)  # started earlier, finished later
    assert watch.degraded("houses", 1)
    assert watch.latest() == {("houses", 1): degraded}


def test_contracts_shared_with_serving_and_training() -> None:
    for label in ["cheap", 1, 2.5, True]:
        assert probability_key(label) == _class_key(label)
    for name, scorer in SCORERS.items():
        assert name in LIVE_METRICS
        assert scorer in LIVE_METRICS


def test_odd_labels_and_probabilities_never_fail() -> None:
    rows = [
        *FOUR,
        row("dear", ["dear"], ts=NOW - 7200),  # a JSON array: no class, and unhashable
        row("dear", {"y": "dear"}, ts=NOW - 7200),
    ]
    w = report(manifest(), rows).windows["24h"]
    assert (w.rows, w.unmatched_labels, w.metrics["accuracy"]) == (6, 2, 0.5)
    assert w.metrics["roc_auc"] is None  # the two rows have no probabilities
    incomplete = [*FOUR, row("cheap", "cheap", ts=NOW - 7200, proba={"cheap": 1.0})]
    assert report(manifest(), incomplete).windows["24h"].metrics["roc_auc"] is None
    odd: Any = {"cheap": "x", "dear": 0.5}  # not what the writer stores, but JSON allows it
    text = [*FOUR, row("cheap", "cheap", ts=NOW - 7200, proba=odd)]
    r = report(manifest(), text)
    assert r.windows["24h"].metrics["roc_auc"] is None
    assert r.windows["1h"].metrics["roc_auc"] == 0.75
    finite_tree(r)


def test_quality_over_time_slices_by_prediction_time() -> None:
    """Three one-hour slices: errors of 1 in the first, none in the second, 3 in the last."""
    rows = [
        row(10.0, 11.0, ts=NOW - 3 * 3600 + 10, model="prices"),
        row(10.0, 9.0, ts=NOW - 2 * 3600 - 10, model="prices"),
        row(5.0, 8.0, ts=NOW - 30, model="prices"),
        row(5.0, 2.0, ts=NOW, model="prices"),  # the last slice includes its end
        row(1.0, 2.0, ts=NOW - 5 * 3600, model="prices"),  # before the span: left out
    ]
    points = quality_over_time(regressor(), rows, now=NOW, span_s=3 * 3600, buckets=3)
    assert [p["rows"] for p in points] == [2, 0, 2]
    assert [p["value"] for p in points] == [pytest.approx(1.0), None, pytest.approx(3.0)]
    assert points[0]["start"] == NOW - 3 * 3600
    assert points[-1]["end"] == NOW


def test_quality_over_time_undoes_scikit_learns_negated_errors() -> None:
    negated = regressor().model_copy(
        update={
            "metrics": {"neg_root_mean_squared_error": -2.0},
            "primary_metric": "neg_root_mean_squared_error",
            "higher_is_better": True,
        }
    )
    rows = [row(10.0, 12.0, ts=NOW - 10, model="prices")]
    (point,) = quality_over_time(negated, rows, now=NOW, span_s=3600, buckets=1)
    assert point["value"] == pytest.approx(-2.0)  # in the manifest's own terms, like its holdout

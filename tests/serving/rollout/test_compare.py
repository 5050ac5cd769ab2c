"""Live quality per experiment version and the tests of significance, on captured rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from scipy import stats

from serving.capture.records import CapturedRow
from serving.rollout.compare import significance, version_quality
from tests.serving.capture.records import manifest, regressor, row


def rows(
    version: int,
    predictions: Sequence[object],
    labels: Sequence[object],
    start: int = 0,
    model: str = "houses",
) -> list[CapturedRow]:
    """Labelled rows, one per request; the same ``start`` gives the same request ids."""
    return [
        row(p, y, ts=1000.0 + start + i, model=model, version=version)
        for i, (p, y) in enumerate(zip(predictions, labels, strict=True))
    ]


def test_paired_classifiers_use_mcnemars_exact_test() -> None:
    labels = ["dear"] * 100
    production = ["dear"] * 70 + ["cheap"] * 30  # right on the first 70
    candidate = ["dear"] * 90 + ["cheap"] * 10  # right on the first 90
    test = significance(
        manifest(version=1),
        manifest(version=2),
        rows(1, production, labels),
        rows(2, candidate, labels),
        paired=True,
    )
    assert test["test"].startswith("McNemar")
    assert test["rows"] == 100
    assert test["difference"] == pytest.approx(0.2)
    # 20 discordant pairs, all for the candidate.
    assert test["p_value"] == pytest.approx(stats.binomtest(0, 20, 0.5).pvalue)
    assert test["significant"] is True


def test_independent_classifiers_use_a_two_proportion_z_test() -> None:
    production = rows(1, ["dear"] * 50 + ["cheap"] * 50, ["dear"] * 100)
    candidate = rows(2, ["dear"] * 55 + ["cheap"] * 45, ["dear"] * 100, start=100)
    test = significance(
        manifest(version=1), manifest(version=2), production, candidate, paired=False
    )
    pooled = 105 / 200
    z = 0.05 / np.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert test["p_value"] == pytest.approx(2 * stats.norm.sf(z))
    assert test["significant"] is False
    assert test["rows"] == {"production": 100, "candidate": 100}


def test_regressors_compare_absolute_errors() -> None:
    truth = [float(i) for i in range(40)]
    errors_c = [0.5 if i % 2 else 1.5 + i / 100 for i in range(40)]
    production = rows(1, [t + 1.0 + i / 1000 for i, t in enumerate(truth)], truth, model="prices")
    candidate = rows(
        2, [t + e for t, e in zip(truth, errors_c, strict=True)], truth, model="prices"
    )
    errors_p = [1.0 + i / 1000 for i in range(40)]
    one, two = regressor(version=1), regressor(version=2)
    paired = significance(one, two, production, candidate, paired=True)
    assert paired["measure"] == "mean_absolute_error"
    assert paired["difference"] == pytest.approx(np.mean(errors_c) - np.mean(errors_p))
    assert paired["p_value"] == pytest.approx(stats.ttest_rel(errors_c, errors_p).pvalue)
    welch = significance(one, two, production, candidate, paired=False)
    assert welch["test"].startswith("Welch")
    expected = stats.ttest_ind(errors_c, errors_p, equal_var=False).pvalue
    assert welch["p_value"] == pytest.approx(expected)


def test_too_few_labelled_rows_run_no_test() -> None:
    test = significance(
        manifest(version=1),
        manifest(version=2),
        rows(1, ["dear"] * 5, ["dear"] * 5),
        rows(2, ["dear"] * 5, ["dear"] * 5),
        paired=True,
    )
    assert test["significant"] is None
    assert "fewer than" in test["reason"]


def test_version_quality_is_the_primary_metric_over_the_experiments_rows() -> None:
    found = version_quality(
        manifest(version=1),
        rows(1, ["dear", "cheap", "dear", "cheap"], ["dear", "cheap", "cheap", "cheap"]),
        3000.0,
        0.05,
        1,
    )
    assert found["metric"] == "f1_macro"
    assert found["rows"] == 4
    assert 0 < found["live"] < 1

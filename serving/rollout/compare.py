"""Live quality of the versions in an experiment, from the labels fed back since it began, and
whether a difference between a candidate and production is significant.

The tests compare what each labelled row says about a version: right or wrong for a
classifier (so accuracy), the absolute error for a regressor (so mean absolute error). A
shadow predicts the very rows production answers, so its rows are paired by request: McNemar's
exact test (classifiers) or a paired t-test (regressors). A canary or A/B version answers other
requests: a two-proportion z-test or Welch's t-test. Two-sided, at :data:`ALPHA`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.capture.quality import live_quality, row_scores
from serving.capture.records import CapturedRow
from serving.store import Manifest, Task

ALPHA = 0.05
MIN_ROWS_FOR_TEST = 10
"""Fewer labelled rows (or pairs) than this: no test is run (``significant`` is null)."""


def version_quality(
    manifest: Manifest, rows: Sequence[CapturedRow], now: float, tolerance: float, min_rows: int
) -> dict[str, Any]:
    """The primary metric over every labelled row of the version in ``rows``."""
    report = live_quality(
        manifest, rows, now=now, last_n=max(1, len(rows)), tolerance=tolerance, min_rows=min_rows
    )
    window = report.windows["last_n"]
    return {
        "metric": report.primary_metric,
        "live": report.live,
        "holdout": report.holdout,
        "rows": window.scored,
        "enough_rows": report.enough_rows,
    }


def significance(
    production: Manifest,
    candidate: Manifest,
    production_rows: Sequence[CapturedRow],
    candidate_rows: Sequence[CapturedRow],
    paired: bool,
) -> dict[str, Any]:
    """Whether the candidate's live quality differs from production's, and by how much."""
    keys_p, scores_p = row_scores(production, production_rows)
    keys_c, scores_c = row_scores(candidate, candidate_rows)
    classifier = production.task == Task.CLASSIFICATION
    measure = "accuracy" if classifier else "mean_absolute_error"
    out: dict[str, Any] = {"measure": measure, "alpha": ALPHA}
    if paired:
        position = {key: i for i, key in enumerate(keys_p)}
        both = [(position[k], i) for i, k in enumerate(keys_c) if k in position]
        p_idx = np.array([p for p, _ in both], dtype=np.int64)
        c_idx = np.array([c for _, c in both], dtype=np.int64)
        scores_p, scores_c = scores_p[p_idx], scores_c[c_idx]
        out["rows"] = len(both)
        if classifier:
            out["test"] = "McNemar's exact test (paired: the same requests)"
        else:
            out["test"] = "paired t-test on absolute errors (the same requests)"
    else:
        out["rows"] = {"production": len(scores_p), "candidate": len(scores_c)}
        if classifier:
            out["test"] = "two-proportion z-test (independent requests)"
        else:
            out["test"] = "Welch's t-test on absolute errors (independent requests)"
    if min(len(scores_p), len(scores_c)) < MIN_ROWS_FOR_TEST:
        out.update(difference=None, p_value=None, significant=None)
        out["reason"] = f"fewer than {MIN_ROWS_FOR_TEST} labelled rows to compare"
        return out
    difference = float(scores_c.mean() - scores_p.mean())
    p_value = _p_value(scores_p, scores_c, paired, classifier)
    out["difference"] = difference
    out["p_value"] = p_value
    out["significant"] = None if p_value is None else bool(p_value < ALPHA)
    return out


def _p_value(a: np.ndarray, b: np.ndarray, paired: bool, classifier: bool) -> float | None:
    # Imported when an experiment is compared: scipy.stats costs each server process ~78 MB.
    from scipy import stats

    if paired and classifier:
        only_a = int(((a == 1) & (b == 0)).sum())
        only_b = int(((a == 0) & (b == 1)).sum())
        if only_a + only_b == 0:
            return 1.0  # every row judged alike: no evidence of a difference
        return float(stats.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)
    if classifier:
        pooled = (a.sum() + b.sum()) / (len(a) + len(b))
        spread = math.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
        if spread == 0:
            return 1.0  # both all right or all wrong
        z = (b.mean() - a.mean()) / spread
        return float(2 * stats.norm.sf(abs(z)))
    result = stats.ttest_rel(b, a) if paired else stats.ttest_ind(b, a, equal_var=False)
    p = float(result.pvalue)
    return None if math.isnan(p) else p

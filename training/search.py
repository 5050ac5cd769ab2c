"""Hyper-parameter search from a spec's ``[search]`` table (grid or randomized).

The search runs on the training part's folds (training/folds.py); the best candidate is refitted
on the whole training part and becomes the version's model. Its fold scores then come from the
same folds that chose it, so they lean optimistic; the holdout, never seen by the search, is the
unbiased figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from training.evaluate import SCORERS
from training.spec import Distribution, SearchSection


@dataclass(frozen=True)
class SearchOutcome:
    model: Any
    """The best pipeline, refitted on the whole training part."""
    best_params: dict[str, Any]
    scoring: str
    table: list[dict[str, Any]]
    """One row per candidate: params, mean_test_score, std_test_score, rank (metric units)."""


def param_name(name: str) -> str:
    """Pipeline parameter name: a bare name is the final estimator's (step ``model``)."""
    return name if "__" in name else f"model__{name}"


def _space(values: list[Any] | Distribution) -> Any:
    if isinstance(values, list):
        return values
    from scipy import stats

    if values.distribution == "uniform":
        return stats.uniform(loc=values.low, scale=values.high - values.low)
    if values.distribution == "loguniform":
        return stats.loguniform(values.low, values.high)
    return stats.randint(int(values.low), int(values.high))  # high excluded


def _plain(value: Any) -> Any:
    """JSON-friendly parameter values (numpy scalars become Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value


def run_search(
    section: SearchSection,
    pipeline: Any,
    X: Any,
    y: npt.NDArray[Any],
    folds: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]],
    *,
    primary: str,
) -> SearchOutcome:
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    metric = section.scoring or primary
    scorer = SCORERS[metric]
    if scorer == "roc_auc" and len(np.unique(y)) > 2:
        scorer = "roc_auc_ovr"
    space = {param_name(k): _space(v) for k, v in section.params.items()}
    common: dict[str, Any] = {
        "scoring": scorer,
        "cv": folds,
        "refit": True,
        "n_jobs": 1,
        "error_score": "raise",
    }
    search: Any
    if section.kind == "grid":
        search = GridSearchCV(pipeline, space, **common)
    else:
        search = RandomizedSearchCV(
            pipeline, space, n_iter=section.n_iter, random_state=section.seed, **common
        )
    search.fit(X, y)
    flip = -1.0 if scorer.startswith("neg_") else 1.0
    results = search.cv_results_
    table = [
        {
            "params": {k: _plain(v) for k, v in results["params"][i].items()},
            "mean_test_score": flip * float(results["mean_test_score"][i]),
            "std_test_score": float(results["std_test_score"][i]),
            "rank": int(results["rank_test_score"][i]),
        }
        for i in range(len(results["params"]))
    ]
    table.sort(key=lambda row: (row["rank"], str(row["params"])))
    return SearchOutcome(
        model=search.best_estimator_,
        best_params={k: _plain(v) for k, v in search.best_params_.items()},
        scoring=metric,
        table=table,
    )

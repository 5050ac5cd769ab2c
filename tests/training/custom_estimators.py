"""Estimators the ONNX converter has never heard of, importable from a spec."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer


def _square(x: Any) -> Any:
    return np.asarray(x) ** 2


class SquaredRidge(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Ridge on squared features: a FunctionTransformer with a custom function inside."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def fit(self, X: Any, y: Any) -> SquaredRidge:
        self.pipeline_ = make_pipeline(FunctionTransformer(_square), Ridge(alpha=self.alpha))
        self.pipeline_.fit(X, y)
        return self

    def predict(self, X: Any) -> Any:
        return self.pipeline_.predict(X)


class ThreadReportingRidge(Ridge):  # type: ignore[misc]
    """A ridge whose predictions are the thread budget it predicts under: its own ``n_jobs``
    (10 x) plus the BLAS threads numpy may use, so a test can see what a pool worker allows."""

    def __init__(self, alpha: float = 1.0, n_jobs: int | None = -1) -> None:
        super().__init__(alpha=alpha)
        self.n_jobs = n_jobs

    def predict(self, X: Any) -> Any:
        from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

        blas = max(
            (p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=0
        )
        return np.full(len(X), 10.0 * float(self.n_jobs or 0) + blas)

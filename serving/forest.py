"""Vectorised evaluation of fitted scikit-learn tree ensembles, with identical results.

scikit-learn's forests call every tree separately (Python overhead per tree and per call):
a 100-tree forest takes ~15 ms for a single row, mostly overhead. Here all trees are walked
at once with numpy, level by level, so a single row costs well under a millisecond, and
results are the same bits as scikit-learn's:

* inputs are rounded to float32 and compared ``x <= threshold`` in float64, as the trees do;
* per-tree outputs are the leaf values, summed over trees in tree order (a sequential
  ``add.accumulate``, as the forest's ``+=`` loop) and divided by the number of trees;
* ``predict`` of a classifier is ``classes_[argmax(proba)]``.

Rows with missing values go to scikit-learn. :func:`compile_estimator` checks the compiled
forest against scikit-learn on sample rows and declines (returns None) on any difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from serving.runtime import FloatArray

_SUPPORTED = {
    "RandomForestClassifier",
    "ExtraTreesClassifier",
    "RandomForestRegressor",
    "ExtraTreesRegressor",
}


class CompiledForest:
    """All trees of a single-output forest as flat arrays; see the module docstring."""

    def __init__(self, forest: Any) -> None:
        trees = [estimator.tree_ for estimator in forest.estimators_]
        self.is_classifier = hasattr(forest, "classes_")
        self.classes = forest.classes_ if self.is_classifier else None
        self.n_trees = len(trees)
        counts = np.array([t.node_count for t in trees])
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
        left, right, feature, threshold, values = [], [], [], [], []
        for tree, offset in zip(trees, offsets, strict=True):
            own = np.arange(tree.node_count, dtype=np.intp) + offset
            leaf = tree.children_left < 0
            left.append(np.where(leaf, own, tree.children_left + offset))
            right.append(np.where(leaf, own, tree.children_right + offset))
            feature.append(np.where(leaf, 0, tree.feature))
            threshold.append(np.where(leaf, np.inf, tree.threshold))
            if self.is_classifier:
                values.append(tree.value[:, 0, : forest.n_classes_])
            else:
                values.append(tree.value[:, 0, :1])
        self.left = np.concatenate(left).astype(np.intp)
        self.right = np.concatenate(right).astype(np.intp)
        self.feature = np.concatenate(feature).astype(np.intp)
        self.threshold = np.concatenate(threshold).astype(np.float64)
        self.values = np.ascontiguousarray(np.concatenate(values), dtype=np.float64)
        self.roots = offsets
        self.depth = max(int(t.max_depth) for t in trees)

    def _leaves(self, X: FloatArray) -> npt.NDArray[np.intp]:
        x = np.ascontiguousarray(X, dtype=np.float32).astype(np.float64)
        n = len(x)
        node = np.repeat(self.roots[np.newaxis, :], n, axis=0)
        rows = np.arange(n)[:, np.newaxis]
        for _ in range(self.depth):
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return node

    def _mean(self, X: FloatArray) -> FloatArray:
        per_tree = self.values[self._leaves(X)]  # (rows, trees, outputs)
        total: FloatArray = np.add.accumulate(per_tree, axis=1)[:, -1]
        total /= self.n_trees
        return total

    def predict_proba(self, X: FloatArray) -> FloatArray:
        return self._mean(X)

    def predict(self, X: FloatArray) -> npt.NDArray[Any]:
        mean = self._mean(X)
        if self.classes is None:
            return mean[:, 0]
        return np.asarray(self.classes.take(np.argmax(mean, axis=1), axis=0))


# Walking all trees at once costs per row what scikit-learn's per-tree loop costs per call;
# measured on a 100-tree forest the two cross near 700 rows, so big batches go to sklearn.
MAX_NODES_PER_CALL = 50_000
"""Use the compiled forest while rows x trees is at most this."""


class FastForestPipeline:
    """A pipeline whose last step is a forest: earlier steps by scikit-learn, the forest here
    (for batches small enough that this is faster; larger ones go to scikit-learn)."""

    def __init__(self, pipeline: Any, forest: CompiledForest) -> None:
        self.pipeline = pipeline
        self.forest = forest
        self._pre = pipeline[:-1] if len(pipeline.steps) > 1 else None
        self.max_rows = max(1, MAX_NODES_PER_CALL // forest.n_trees)

    def _features(self, X: FloatArray) -> FloatArray | None:
        if len(X) > self.max_rows:
            return None
        out = X if self._pre is None else self._pre.transform(X)
        features = np.asarray(out, dtype=np.float64)
        return None if np.isnan(features).any() else features

    def predict(self, X: FloatArray) -> npt.NDArray[Any]:
        features = self._features(X)
        if features is None:
            return np.asarray(self.pipeline.predict(X))
        return self.forest.predict(features)

    def predict_proba(self, X: FloatArray) -> FloatArray:
        features = self._features(X)
        if features is None:
            return np.asarray(self.pipeline.predict_proba(X), dtype=np.float64)
        return self.forest.predict_proba(features)


def compile_estimator(estimator: Any, sample: FloatArray) -> FastForestPipeline | None:
    """A faster stand-in for a fitted Pipeline ending in a single-output forest, if it gives
    exactly the same outputs on ``sample`` rows; None when unsupported or not identical."""
    steps = getattr(estimator, "steps", None)
    if not steps:
        return None
    forest = steps[-1][1]
    if type(forest).__name__ not in _SUPPORTED or getattr(forest, "n_outputs_", 2) != 1:
        return None
    try:
        fast = FastForestPipeline(estimator, CompiledForest(forest))
        if not np.array_equal(fast.predict(sample), np.asarray(estimator.predict(sample))):
            return None
        if fast.forest.is_classifier and not np.array_equal(
            fast.predict_proba(sample), estimator.predict_proba(sample)
        ):
            return None
    except Exception:
        return None
    return fast

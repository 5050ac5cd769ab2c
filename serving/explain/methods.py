"""Exact per-feature contributions of a pipeline's output, by one of two methods chosen by the
model's type.

* ``"linear"``: a linear model's output is ``intercept_k + coef_k · x_t`` over the columns
  ``x_t`` the preprocessing produces. Column ``j`` contributes ``coef_k[j] * (x_t[j] - mean[j])``
  (``mean``: over the training rows) and the base is the output at the mean row, so base plus
  contributions is the output, to rounding.
* ``"tree"``: path-dependent TreeSHAP (shap's C extension), the Shapley values of the trees'
  own output with the trees' cover standing in for the training distribution; no background
  rows are kept.

Both give the contributions of the preprocessed columns; they are summed back to the input
features through :func:`serving.explain.groups.column_groups`.

Output convention, shared by :meth:`Explainer.explain` and :func:`output_of`: one output per
class for classifiers (index = position in ``classes``), one for regressors. A binary model with
a single margin (linear classifiers, gradient boosting) gets two outputs: class 0 the negated
margin, class 1 the margin, so a predicted class's output is always found by its index.

scikit-learn and shap are imported inside the functions: the web server imports ``serving`` and
must not pay for them.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

SPACES: Final = ("value", "log-odds", "logit", "probability")
"""The spaces contributions are stated in: a regressor's ``predict`` (``"value"``); a binary
classifier's decision function or a boosted binary classifier's raw margin (``"log-odds"``); a
multiclass linear or boosted classifier's raw score per class, the softmax input (``"logit"``);
a forest or decision tree classifier's ``predict_proba`` (``"probability"``)."""

SUPPORTED: Final = (
    "linear models (LinearRegression, Ridge, Lasso, ElasticNet, LogisticRegression, SGD..., "
    "anything with coef_ and intercept_ and a linear decision function) and tree ensembles "
    "(RandomForest, ExtraTrees, GradientBoosting, HistGradientBoosting, DecisionTree)"
)

SHAP_REQUIREMENT: Final = "shap>=0.46,<1"  # as in pyproject.toml

# Rows used to check, at training time, that base plus contributions is the model's output: a
# model that passed the type checks but is not what it seems (a link function, a one-vs-one
# decision function) is refused then rather than explained wrongly later.
_CHECK_ROWS = 64
_CHECK_ATOL = 1e-6
_CHECK_RTOL = 1e-7
# The linear means are summed over blocks of rows: one-hot encoding a large training set at
# once could take more memory than the training itself.
_MEAN_BLOCK = 8192
# Identity link: predict is the trees' raw sum. Gamma and Poisson losses predict exp(raw).
_IDENTITY_HGB_LOSSES = ("squared_error", "absolute_error", "quantile")


class UnsupportedExplanation(ValueError):  # noqa: N818 - the name callers already catch
    """The pipeline's model or preprocessing has no exact explanation method here."""


@dataclass(frozen=True)
class Background:
    """What explaining a fitted pipeline needs besides the pipeline, computed from the training
    rows once (:func:`background`) and stored beside the model as JSON.

    ``groups[j]``: index in ``feature_names`` of preprocessed column ``j``'s input feature.
    ``classes``: the classifier's ``classes_`` (None for a regressor). ``base_values``: one per
    output, except a binary single-margin model's one value, the positive class's (``classes[1]``).
    ``means``: the linear method's mean of each preprocessed column over the training rows.
    """

    method: Literal["linear", "tree"]
    space: str
    feature_names: list[str]
    groups: list[int]
    classes: list[Any] | None
    base_values: list[float]
    means: list[float] | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; Python writes floats with the shortest repr that reads back equal,
        so nothing is lost."""
        return {
            "method": self.method,
            "space": self.space,
            "feature_names": list(self.feature_names),
            "groups": [int(g) for g in self.groups],
            "classes": None if self.classes is None else [_plain(c) for c in self.classes],
            "base_values": [float(v) for v in self.base_values],
            "means": None if self.means is None else [float(v) for v in self.means],
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Background:
        """The background :meth:`to_json` wrote; ValueError when the document is malformed."""
        method = document.get("method")
        if method not in ("linear", "tree"):
            raise ValueError(f"explanation background: unknown method {method!r}")
        space = document.get("space")
        if space not in SPACES:
            raise ValueError(f"explanation background: unknown space {space!r}")
        names = _list_of(document, "feature_names", str)
        groups = _list_of(document, "groups", int)
        if any(not 0 <= g < len(names) for g in groups):
            raise ValueError("explanation background: a group index is out of range")
        classes = document.get("classes")
        if classes is not None and not isinstance(classes, list):
            raise ValueError("explanation background: classes must be a list or null")
        base = [float(v) for v in _list_of(document, "base_values", int | float)]
        means = None
        if document.get("means") is not None:
            means = [float(v) for v in _list_of(document, "means", int | float)]
        if (means is None) != (method == "tree"):
            raise ValueError("explanation background: means go with the linear method only")
        return cls(
            method=cast(Literal["linear", "tree"], method),
            space=cast(str, space),
            feature_names=names,
            groups=groups,
            classes=classes,
            base_values=base,
            means=means,
        )


def background(pipeline: Any, X_train: Any, feature_names: Sequence[str]) -> Background:
    """The background of a fitted ``pipeline`` from its training rows ``X_train`` (what its
    ``fit`` took); ``feature_names``: the input features in the order the pipeline takes them.

    Raises :class:`UnsupportedExplanation` when the model or its preprocessing has no exact
    method here, or when the check on the first training rows finds that base plus
    contributions is not the model's output.
    """
    from serving.explain.groups import column_groups

    steps, model = _split(pipeline)
    method = _method_of(model)  # type checks first: they are cheap, the rest may not be
    groups = column_groups(_preprocessing(pipeline), feature_names)
    membership = _membership(groups, len(feature_names))
    classes = _classes(model)
    engine: _Linear | _Trees
    means: FloatArray | None = None
    if method == "linear":
        coef, intercept = _linear_parameters(model, classes)
        if coef.shape[1] != len(groups):
            raise _unsupported(
                model, f"coef_ has {coef.shape[1]} columns, the preprocessing {len(groups)}"
            )
        means = _column_means(steps, X_train, len(groups))
        engine = _Linear(coef, intercept, means, membership)
        space = _linear_space(classes)
    else:
        engine = _Trees(model, membership)
        space = _tree_space(model, classes)
    base = engine.base()
    if not np.all(np.isfinite(base)) or (means is not None and not np.all(np.isfinite(means))):
        raise _unsupported(model, "its base value or a column mean is not finite")
    found = Background(
        method=method,
        space=space,
        feature_names=list(feature_names),
        groups=list(groups),
        classes=classes,
        base_values=[float(v) for v in base],
        means=None if means is None else [float(v) for v in means],
    )
    _check_additivity(pipeline, steps, model, engine, found, _head(X_train, _CHECK_ROWS))
    return found


class Explainer:
    """Explains a fitted pipeline's predictions with its :class:`Background`; what the method
    needs (shap's tree structures) is built once here and reused by every call."""

    def __init__(self, pipeline: Any, background: Background) -> None:
        steps, model = _split(pipeline)
        method = _method_of(model)
        if method != background.method:
            raise ValueError(
                f"the background is for the {background.method} method, "
                f"the pipeline's {type(model).__name__} takes the {method} method"
            )
        classes = _classes(model)
        if classes != background.classes:
            raise ValueError(
                f"the background is for classes {background.classes}, the model has {classes}"
            )
        membership = _membership(background.groups, len(background.feature_names))
        engine: _Linear | _Trees
        if method == "linear":
            coef, intercept = _linear_parameters(model, classes)
            if background.means is None or len(background.means) != coef.shape[1]:
                raise ValueError("the background's column means do not match the model's coef_")
            means = np.asarray(background.means, dtype=np.float64)
            engine = _Linear(coef, intercept, means, membership)
        else:
            engine = _Trees(model, membership)
        # The same computation background() made: a difference means another model's file.
        built = engine.base()
        if built.shape != (len(background.base_values),) or not np.allclose(
            built, background.base_values, rtol=1e-9, atol=1e-9
        ):
            raise ValueError("the background's base values are not this pipeline's model's")
        self.background = background
        self._steps = steps
        self._engine = engine
        self._base = _doubled(np.asarray(background.base_values, dtype=np.float64), background)

    def explain(
        self, X: Any, outputs: npt.NDArray[np.integer[Any]] | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """``(base, contributions)`` for the rows ``X`` (what the pipeline's ``predict`` takes):
        ``contributions[i, f, k]`` is input feature ``f``'s part of row ``i``'s output ``k``
        and ``base[k] + contributions[i, :, k].sum()`` is the output in the background's space
        (:func:`output_of`). ``outputs``: indices of the outputs to return, in that order
        (None: all)."""
        Xt = _transform(self._steps, X)
        if Xt.shape[1] != len(self.background.groups):
            raise ValueError(
                f"the preprocessing produced {Xt.shape[1]} columns, "
                f"the background has {len(self.background.groups)}"
            )
        contributions = _contributions(self._engine, self.background, Xt)
        base = self._base
        if outputs is not None:
            chosen = _output_indices(outputs, len(base))
            return base[chosen], np.ascontiguousarray(contributions[:, :, chosen])
        return base.copy(), contributions


def output_of(pipeline: Any, X: Any, background: Background) -> FloatArray:
    """The pipeline's output for the rows ``X`` in the background's space, one column per
    output in the module's convention: ``(n_rows, n_outputs)`` float64."""
    if background.space == "value":
        raw = pipeline.predict(X)
    elif background.space == "probability":
        raw = pipeline.predict_proba(X)
    else:
        raw = pipeline.decision_function(X)
    out = np.asarray(raw, dtype=np.float64)
    out = out.reshape(out.shape[0], -1)
    if _single_margin(background):
        return np.concatenate([-out, out], axis=1)
    return out


# --- the two methods ----------------------------------------------------------------------


class _Linear:
    """``coef`` (outputs, columns), ``intercept`` (outputs,), ``means`` (columns,);
    ``membership``: see :func:`_membership`."""

    def __init__(
        self,
        coef: FloatArray,
        intercept: FloatArray,
        means: FloatArray,
        membership: FloatArray | None,
    ) -> None:
        self.coef = coef
        self.intercept = intercept
        self.means = means
        # coef folded into the column-to-feature sums, so a call is one matrix product.
        self._weights = None if membership is None else coef[:, :, None] * membership[None, :, :]

    def base(self) -> FloatArray:
        return self.intercept + self.coef @ self.means

    def grouped(self, Xt: FloatArray) -> FloatArray:
        """``(rows, features, outputs)``."""
        centred = Xt - self.means
        if self._weights is None:
            return centred[:, :, None] * self.coef.T[None, :, :]
        out = np.tensordot(centred, self._weights, axes=([1], [1]))  # (rows, outputs, features)
        return np.ascontiguousarray(out.transpose(0, 2, 1))


class _Trees:
    """shap's path-dependent TreeExplainer over the model, or over an equivalent description
    of its trees where shap does not read the model itself."""

    def __init__(self, model: Any, membership: FloatArray | None) -> None:
        _check_trees(model)
        self.membership = membership
        shap = _shap()
        described = _gradient_boosting_trees(model) if _needs_description(model) else None
        self.explainer = shap.TreeExplainer(
            model if described is None else described, feature_perturbation="tree_path_dependent"
        )

    def base(self) -> FloatArray:
        return np.asarray(self.explainer.expected_value, dtype=np.float64).reshape(-1)

    def columns(self, Xt: FloatArray) -> FloatArray:
        """``(rows, columns, outputs)``."""
        values = self.explainer.shap_values(Xt, check_additivity=False)
        # shap returns one array per output (older releases) or a (rows, columns, outputs)
        # array; a single output comes as (rows, columns).
        stacked = np.stack(values, axis=-1) if isinstance(values, list) else np.asarray(values)
        if stacked.ndim == 2:
            stacked = stacked[:, :, None]
        return np.asarray(stacked, dtype=np.float64)

    def grouped(self, Xt: FloatArray) -> FloatArray:
        """``(rows, features, outputs)``."""
        columns = self.columns(Xt)
        if self.membership is None:
            return columns
        rows, width, outputs = columns.shape
        flat = columns.transpose(0, 2, 1).reshape(rows * outputs, width) @ self.membership
        return np.ascontiguousarray(flat.reshape(rows, outputs, -1).transpose(0, 2, 1))


def _contributions(engine: _Linear | _Trees, background: Background, Xt: FloatArray) -> FloatArray:
    grouped = engine.grouped(Xt)
    if _single_margin(background):
        return np.concatenate([-grouped, grouped], axis=2)
    return grouped


def _check_additivity(
    pipeline: Any,
    steps: list[Any],
    model: Any,
    engine: _Linear | _Trees,
    found: Background,
    X: Any,
) -> None:
    Xt = _transform(steps, X)
    contributions = _contributions(engine, found, Xt)
    base = _doubled(np.asarray(found.base_values, dtype=np.float64), found)
    total = base[None, :] + contributions.sum(axis=1)
    expected = output_of(pipeline, X, found)
    if total.shape != expected.shape:
        raise _unsupported(
            model, f"it has {expected.shape[1]} outputs where {total.shape[1]} were explained"
        )
    if not np.allclose(total, expected, rtol=_CHECK_RTOL, atol=_CHECK_ATOL):
        error = float(np.max(np.abs(total - expected)))
        raise _unsupported(
            model,
            f"base plus contributions differs from its {found.space} output by up to "
            f"{error:.3g} (a link function, or a decision function that is not linear?)",
        )


# --- what the model is --------------------------------------------------------------------


def _method_of(model: Any) -> Literal["linear", "tree"]:
    if isinstance(model, _tree_types()):
        return "tree"
    # hasattr is False for kernel SVMs: their coef_ property raises AttributeError.
    if hasattr(model, "coef_") and hasattr(model, "intercept_"):
        return "linear"
    raise _unsupported(model, None)


def _tree_types() -> tuple[type[Any], ...]:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    return (
        RandomForestClassifier,
        RandomForestRegressor,
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        DecisionTreeClassifier,
        DecisionTreeRegressor,
    )


def _check_trees(model: Any) -> None:
    """Refuse the tree models whose output is not the sum TreeSHAP explains."""
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )

    if getattr(model, "n_outputs_", 1) != 1:
        raise _unsupported(model, "it predicts several targets")
    if isinstance(model, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        categorical = getattr(model, "is_categorical_", None)
        if categorical is not None and np.any(categorical):
            raise _unsupported(model, "it has native categorical splits")
    if isinstance(model, HistGradientBoostingRegressor) and model.loss not in (
        _IDENTITY_HGB_LOSSES
    ):
        raise _unsupported(model, f"loss {model.loss!r} predicts through a link function")
    if isinstance(model, GradientBoostingClassifier | GradientBoostingRegressor):
        init = model.init_
        if not (isinstance(init, str) and init == "zero") and not isinstance(
            init, DummyClassifier | DummyRegressor
        ):
            raise _unsupported(model, f"its init estimator {type(init).__name__} varies with x")


def _needs_description(model: Any) -> bool:
    """shap reads gradient boosting itself only for one output and a prior as the init."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    if not isinstance(model, GradientBoostingClassifier | GradientBoostingRegressor):
        return False
    init = model.init_
    return bool(model.estimators_.shape[1] > 1 or (isinstance(init, str) and init == "zero"))


def _gradient_boosting_trees(model: Any) -> dict[str, Any]:
    """A gradient boosting model as shap's tree-dictionary format: the trees of output ``k``
    write only into output ``k``, scaled by the learning rate, plus the constant init."""
    from sklearn.base import is_classifier

    estimators = model.estimators_
    n_outputs = estimators.shape[1]
    rate = float(model.learning_rate)
    trees: list[dict[str, Any]] = []
    for k in range(n_outputs):
        for estimator in estimators[:, k]:
            tree = estimator.tree_
            values = np.zeros((tree.node_count, n_outputs), dtype=np.float64)
            values[:, k] = tree.value[:, 0, 0]
            left = tree.children_left
            right = tree.children_right
            go_left = getattr(tree, "missing_go_to_left", None)
            trees.append(
                {
                    "children_left": left,
                    "children_right": right,
                    "children_default": left if go_left is None else np.where(go_left, left, right),
                    "features": tree.feature,
                    "thresholds": tree.threshold.astype(np.float64),
                    "values": values * rate,
                    "node_sample_weight": tree.weighted_n_node_samples.astype(np.float64),
                }
            )
    # The init is constant (checked), so any row gives it: the raw output less the trees' part.
    origin = np.zeros((1, model.n_features_in_))
    row: Any = origin
    names = getattr(model, "feature_names_in_", None)
    if names is not None:  # a model fitted on a DataFrame warns when given an array
        import pandas as pd

        row = pd.DataFrame(origin, columns=names)
    raw = model.decision_function(row) if is_classifier(model) else model.predict(row)
    raw = np.asarray(raw, dtype=np.float64).reshape(n_outputs)
    # The trees themselves were fitted on arrays, whatever the model was given.
    trees_part = np.array(
        [
            sum(rate * float(e.predict(origin)[0]) for e in estimators[:, k])
            for k in range(n_outputs)
        ]
    )
    return {
        "trees": trees,
        "base_offset": raw - trees_part,
        "tree_output": "raw_value",
        # scikit-learn's trees compare float32 features with float64 thresholds.
        "input_dtype": np.float32,
        "internal_dtype": np.float64,
    }


def _tree_space(model: Any, classes: list[Any] | None) -> str:
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier

    if classes is None:
        return "value"
    if isinstance(model, GradientBoostingClassifier | HistGradientBoostingClassifier):
        return "log-odds" if len(classes) == 2 else "logit"
    return "probability"


def _linear_space(classes: list[Any] | None) -> str:
    if classes is None:
        return "value"
    return "log-odds" if len(classes) == 2 else "logit"


def _linear_parameters(model: Any, classes: list[Any] | None) -> tuple[FloatArray, FloatArray]:
    """``coef`` as (outputs, columns) and ``intercept`` as (outputs,)."""
    raw = model.coef_
    if hasattr(raw, "toarray"):  # after sparsify()
        raw = raw.toarray()
    coef = np.asarray(raw, dtype=np.float64)
    if coef.ndim == 1:
        coef = coef.reshape(1, -1)
    if coef.ndim != 2:
        raise _unsupported(model, f"coef_ has shape {coef.shape}")
    if classes is None:
        wanted = 1
    elif not hasattr(model, "decision_function"):
        raise _unsupported(model, "a linear classifier without decision_function")
    else:
        wanted = 1 if len(classes) == 2 else len(classes)
    if coef.shape[0] != wanted:
        what = "targets" if classes is None else f"rows for {len(classes)} classes"
        raise _unsupported(model, f"coef_ has {coef.shape[0]} {what}")
    intercept = np.asarray(model.intercept_, dtype=np.float64).reshape(-1)
    if intercept.size == 1:
        intercept = np.full(wanted, intercept[0])
    if intercept.shape != (wanted,):
        raise _unsupported(model, f"intercept_ has shape {intercept.shape}")
    return coef, intercept


def _classes(model: Any) -> list[Any] | None:
    from sklearn.base import is_classifier

    if not is_classifier(model):
        return None
    classes = [_plain(c) for c in model.classes_]
    if any(not isinstance(c, str | int | float | bool) for c in classes):
        raise _unsupported(model, "its classes are not strings or numbers")
    if len(classes) < 2:
        raise _unsupported(model, "it was fitted on a single class")
    return classes


def _unsupported(model: Any, why: str | None) -> UnsupportedExplanation:
    reason = f" ({why})" if why else ""
    return UnsupportedExplanation(
        f"{type(model).__name__} has no exact explanation method{reason}; supported: {SUPPORTED}"
    )


# --- pipelines, rows and columns ----------------------------------------------------------


def _split(pipeline: Any) -> tuple[list[Any], Any]:
    """The preprocessing steps (transformers, in order) and the model."""
    steps = getattr(pipeline, "steps", None)
    if steps is None:
        return [], pipeline
    transformers = [s for _, s in steps[:-1] if s is not None and not isinstance(s, str)]
    return transformers, steps[-1][1]


def _preprocessing(pipeline: Any) -> Any:
    return pipeline[:-1] if getattr(pipeline, "steps", None) is not None else None


def _transform(steps: list[Any], X: Any) -> FloatArray:
    out = X
    for step in steps:
        out = step.transform(out)
    if hasattr(out, "toarray"):  # a sparse matrix
        out = out.toarray()
    return np.asarray(out, dtype=np.float64)


def _column_means(steps: list[Any], X: Any, width: int) -> FloatArray:
    total = np.zeros(width, dtype=np.float64)
    n = len(X)
    if n == 0:
        raise ValueError("no training rows to compute the column means from")
    for start in range(0, n, _MEAN_BLOCK):
        total += _transform(steps, _rows(X, start, start + _MEAN_BLOCK)).sum(axis=0)
    return total / n


def _rows(X: Any, start: int, stop: int) -> Any:
    return X.iloc[start:stop] if hasattr(X, "iloc") else X[start:stop]


def _head(X: Any, n: int) -> Any:
    return _rows(X, 0, n)


def _membership(groups: Sequence[int], n_features: int) -> FloatArray | None:
    """The (columns, features) 0/1 matrix summing columns into features; None when every
    feature is its own column and there is nothing to sum."""
    if list(groups) == list(range(n_features)):
        return None
    matrix = np.zeros((len(groups), n_features), dtype=np.float64)
    matrix[np.arange(len(groups)), np.asarray(groups, dtype=np.intp)] = 1.0
    return matrix


def _single_margin(background: Background) -> bool:
    return (
        background.classes is not None
        and len(background.classes) == 2
        and len(background.base_values) == 1
    )


def _doubled(base: FloatArray, background: Background) -> FloatArray:
    return np.concatenate([-base, base]) if _single_margin(background) else base


def _output_indices(outputs: Any, n_outputs: int) -> npt.NDArray[np.intp]:
    chosen = np.asarray(outputs)
    if chosen.ndim != 1 or not np.issubdtype(chosen.dtype, np.integer):
        raise ValueError("outputs must be a 1-D array of output indices")
    if chosen.size and (chosen.min() < 0 or chosen.max() >= n_outputs):
        raise ValueError(f"an output index is out of range (the model has {n_outputs} outputs)")
    return chosen.astype(np.intp)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _list_of(document: dict[str, Any], key: str, kind: Any) -> list[Any]:
    values = document.get(key)
    if not isinstance(values, list) or any(
        not isinstance(v, kind) or isinstance(v, bool) for v in values
    ):
        raise ValueError(f"explanation background: {key} must be a list of {kind}")
    return values


def _shap() -> Any:
    loaded = sys.modules.get("shap")
    if loaded is not None:
        return loaded
    try:
        with warnings.catch_warnings():
            # shap builds its plots' colormaps at import through matplotlib calls marked for
            # deprecation; that is shap's to fix, and a warnings-as-errors setting must not turn
            # it into a failure to explain.
            warnings.filterwarnings("ignore", module=r"shap(\.|$)")
            import shap  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            f"explaining tree models needs shap ({SHAP_REQUIREMENT!r}): {exc}"
        ) from exc
    return shap

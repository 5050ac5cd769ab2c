"""Which input feature each column of a pipeline's preprocessed matrix came from.

Contributions are computed for the columns the model sees (a one-hot encoder turns one
categorical input into several) and summed back to the inputs the caller sent. Only transformers
whose column mapping is known exactly are followed: a column mapped to the wrong input would give
a wrong explanation with nothing to show for it, so anything else is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.explain.methods import UnsupportedExplanation

SUPPORTED_PREPROCESSING = (
    "Pipeline, ColumnTransformer, SimpleImputer, StandardScaler, OneHotEncoder and 'passthrough'"
)


def column_groups(preprocessing: Any, feature_names: Sequence[str]) -> list[int]:
    """For each column of ``preprocessing.transform(X)``, the index in ``feature_names`` of the
    input feature it came from.

    ``preprocessing`` is everything a pipeline runs before its model: a fitted ``Pipeline``
    (possibly with no steps), a single fitted transformer, or None or ``"passthrough"`` for none.
    ``feature_names`` are the input features in the order the pipeline takes them. Raises
    :class:`UnsupportedExplanation` for a transformer whose columns cannot be traced exactly.
    """
    names = list(feature_names)
    return _trace(preprocessing, list(range(len(names))), names)


def _trace(step: Any, groups: list[int], names: list[str] | None) -> list[int]:
    """The output columns' groups of ``step``, given its input columns' ``groups``; ``names``
    are the input columns' names when they are the caller's feature names (top level only)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    if step is None or (isinstance(step, str) and step == "passthrough"):
        return groups
    kind = type(step)
    # Exact types, not subclasses: a subclass may remap columns in ways no check here would see.
    if kind is Pipeline:
        for _, inner in step.steps:
            groups = _trace(inner, groups, names)
            names = None
        return groups
    _check_inputs(step, groups)
    if kind is StandardScaler:
        out = groups
    elif kind is FunctionTransformer:
        out = _identity(step, groups)
    elif kind is SimpleImputer:
        out = _imputer(step, groups)
    elif kind is OneHotEncoder:
        out = _one_hot(step, groups)
    elif kind is ColumnTransformer:
        out = _column_transformer(step, groups, names)
    else:
        raise _unsupported(step, "no exact mapping of its columns to its inputs")
    _check_outputs(step, out)
    return out


def _identity(step: Any, groups: list[int]) -> list[int]:
    # A fitted ColumnTransformer stores its "passthrough" entries as this identity transformer.
    if step.func is None and step.feature_names_out in (None, "one-to-one"):
        return groups
    raise _unsupported(step, "only the identity (func=None) is supported")


def _imputer(step: Any, groups: list[int]) -> list[int]:
    kept = groups
    if not step.keep_empty_features:
        # Mirrors SimpleImputer.transform: a column with no observed value at fit (a missing
        # statistic) is dropped from the output.
        statistics = np.asarray(step.statistics_)
        missing = np.asarray(statistics != statistics, dtype=bool)  # NaN, also in object arrays
        kept = [g for g, gone in zip(groups, missing, strict=True) if not gone]
    indicator = getattr(step, "indicator_", None)
    if step.add_indicator and indicator is not None:
        kept = kept + [groups[int(j)] for j in indicator.features_]
    return kept


def _one_hot(step: Any, groups: list[int]) -> list[int]:
    drop = step.drop_idx_
    # The attribute is absent (AttributeError) unless infrequent grouping is enabled.
    infrequent = getattr(step, "infrequent_categories_", None)
    out: list[int] = []
    for i, categories in enumerate(step.categories_):
        width = len(categories)
        if infrequent is not None and infrequent[i] is not None:
            width -= len(infrequent[i]) - 1  # the infrequent categories share one column
        if drop is not None and drop[i] is not None:
            width -= 1
        out.extend([groups[i]] * width)
    return out


def _column_transformer(step: Any, groups: list[int], names: list[str] | None) -> list[int]:
    fitted_names = getattr(step, "feature_names_in_", None)
    known = list(fitted_names) if fitted_names is not None else None
    out: list[int] = []
    for _, transformer, columns in step.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        selected = _select(step, columns, groups, names, known)
        if not selected:
            continue  # scikit-learn skips a transformer that selects no column
        out.extend(_trace(transformer, selected, None))
    return out


def _select(
    step: Any,
    columns: Any,
    groups: list[int],
    names: list[str] | None,
    known: list[str] | None,
) -> list[int]:
    """The groups of the input columns one ColumnTransformer entry selects."""
    if isinstance(columns, str | int | np.integer):
        columns = [columns]
    if isinstance(columns, slice):
        if all(isinstance(v, int | None) for v in (columns.start, columns.stop, columns.step)):
            return groups[columns]
        raise _unsupported(step, "a slice of column names cannot be traced")
    values = list(np.asarray(columns, dtype=object).ravel()) if len(columns) else []
    if values and all(isinstance(v, bool | np.bool_) for v in values):
        if len(values) != len(groups):
            raise _unsupported(step, "a boolean column mask of the wrong length")
        return [g for g, keep in zip(groups, values, strict=True) if keep]
    out: list[int] = []
    for value in values:
        if isinstance(value, str):
            out.append(_by_name(step, value, groups, names, known))
        elif isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
            out.append(groups[int(value)])
        else:
            raise _unsupported(step, f"cannot trace the column selector {value!r}")
    return out


def _by_name(
    step: Any, name: str, groups: list[int], names: list[str] | None, known: list[str] | None
) -> int:
    # The caller's names first: the rows it sends carry them, whatever order fit saw.
    if names is not None and name in names:
        return groups[names.index(name)]
    if known is not None and name in known and len(known) == len(groups):
        return groups[known.index(name)]
    raise _unsupported(step, f"selects column {name!r}, which is not an input feature")


def _check_inputs(step: Any, groups: list[int]) -> None:
    expected = getattr(step, "n_features_in_", None)
    if expected is not None and expected != len(groups):
        raise _unsupported(step, f"it was fitted on {expected} columns but receives {len(groups)}")


def _check_outputs(step: Any, out: list[int]) -> None:
    # get_feature_names_out is scikit-learn's own count of the output columns; it catches a
    # mapping that went wrong (a parameter combination not mirrored above).
    try:
        produced = len(step.get_feature_names_out())
    except (AttributeError, TypeError, ValueError):
        return
    if produced != len(out):
        raise _unsupported(
            step, f"it produces {produced} columns where {len(out)} were traced to inputs"
        )


def _unsupported(step: Any, why: str) -> UnsupportedExplanation:
    return UnsupportedExplanation(
        f"cannot trace the preprocessing step {type(step).__name__} back to the input features: "
        f"{why}. Supported preprocessing: {SUPPORTED_PREPROCESSING}"
    )

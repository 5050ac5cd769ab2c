"""Exact contributions (serving.explain) on real scikit-learn models trained on small data:
base plus contributions is the model's output, tree contributions are shap's TreeSHAP values
summed back to the input features, and what cannot be explained exactly is refused."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from serving.explain import (
    Background,
    Explainer,
    UnsupportedExplanation,
    background,
    column_groups,
    output_of,
)
from serving.explain.methods import _gradient_boosting_trees
from tests.serving.process import python_prints

TOLERANCE = 1e-6

Data = tuple[Any, Any, Any, Any, list[str]]
"""Training rows, holdout rows, training labels, holdout labels, input feature names."""


@pytest.fixture(scope="module")
def shap() -> Any:
    with warnings.catch_warnings():
        # shap's import trips a matplotlib deprecation warning, which this suite makes an error.
        warnings.filterwarnings("ignore", module=r"shap(\.|$)")
        return pytest.importorskip(
            "shap", reason="tree explanations need shap (pip install 'shap>=0.46')"
        )


def _split(loader: Callable[..., Any], stratify: bool) -> Data:
    bunch = loader()
    X, y = bunch.data.astype(np.float64), bunch.target
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y if stratify else None
    )
    return X_train, X_test, y_train, y_test, [str(n) for n in bunch.feature_names]


@cache
def iris() -> Data:
    return _split(load_iris, stratify=True)


@cache
def breast_cancer() -> Data:
    return _split(load_breast_cancer, stratify=True)


@cache
def diabetes() -> Data:
    return _split(load_diabetes, stratify=False)


MIXED_NAMES = ["num_a", "color", "num_b", "size"]
"""Numeric and categorical inputs interleaved: one-hot columns come out grouped by kind, so
their features are not contiguous in the preprocessed matrix."""


@cache
def mixed() -> Data:
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "num_a": rng.normal(size=n),
            "color": rng.choice(["red", "green", "blue"], size=n),
            "num_b": rng.uniform(0.0, 10.0, size=n),
            "size": rng.choice(["S", "M", "L", "XL"], size=n),
        }
    )
    frame.loc[rng.random(n) < 0.05, "num_b"] = np.nan
    frame.loc[rng.random(n) < 0.05, "color"] = np.nan
    score = (
        frame["num_a"]
        + 1.5 * (frame["color"] == "red")
        - (frame["size"] == "L")
        + 0.1 * frame["num_b"].fillna(5.0)
        + rng.normal(scale=0.5, size=n)
    )
    y = (score > score.median()).astype(int).to_numpy()
    X_train, X_test, y_train, y_test = train_test_split(
        frame, y, test_size=0.25, random_state=0, stratify=y
    )
    return X_train, X_test, y_train, y_test, MIXED_NAMES


def mixed_pipeline(model: Any) -> Pipeline:
    """As training.pipeline.build_pipeline makes it for nullable numeric and categorical data."""
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    prep = ColumnTransformer(
        [("numeric", numeric, ["num_a", "num_b"]), ("categorical", categorical, ["color", "size"])],
        remainder="drop",
    )
    return Pipeline([("prep", prep), ("model", model)])


def scaled(model: Any) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("model", model)])


def fitted(pipeline: Pipeline, data: Data) -> Pipeline:
    X_train, _, y_train, _, _ = data
    return pipeline.fit(X_train, y_train)


def explained(pipeline: Pipeline, data: Data) -> tuple[Background, np.ndarray, np.ndarray]:
    X_train, X_test, _, _, names = data
    found = background(pipeline, X_train, names)
    base, contributions = Explainer(pipeline, found).explain(X_test)
    return found, base, contributions


def assert_additive(pipeline: Pipeline, data: Data, found: Background, base, contributions):
    X_test, names = data[1], data[4]
    expected = output_of(pipeline, X_test, found)
    assert contributions.dtype == np.float64
    assert contributions.shape == (len(X_test), len(names), expected.shape[1])
    assert base.shape == (expected.shape[1],)
    np.testing.assert_allclose(base + contributions.sum(axis=1), expected, rtol=0, atol=TOLERANCE)


def transformed(pipeline: Pipeline, X: Any) -> np.ndarray:
    return np.asarray(pipeline[:-1].transform(X), dtype=np.float64)


def shap_reference(shap: Any, model: Any, Xt: np.ndarray) -> np.ndarray:
    """shap's own path-dependent TreeSHAP values as (rows, columns, outputs)."""
    explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
    values = explainer.shap_values(Xt, check_additivity=False)
    stacked = np.stack(values, axis=-1) if isinstance(values, list) else np.asarray(values)
    return stacked[:, :, None] if stacked.ndim == 2 else stacked


def as_outputs(reference: np.ndarray, found: Background) -> np.ndarray:
    """One margin becomes the two outputs of the convention: class 0 negated, class 1."""
    if found.classes is not None and len(found.classes) == 2 and reference.shape[2] == 1:
        return np.concatenate([-reference, reference], axis=2)
    return reference


# --- linear ----------------------------------------------------------------------------------


def test_multiclass_logistic_regression_is_its_terms_around_the_training_mean() -> None:
    data = iris()
    pipeline = fitted(scaled(LogisticRegression(max_iter=1000)), data)
    found, base, contributions = explained(pipeline, data)
    assert (found.method, found.space, found.classes) == ("linear", "logit", [0, 1, 2])
    assert_additive(pipeline, data, found, base, contributions)
    model = pipeline[-1]
    means = transformed(pipeline, data[0]).mean(axis=0)
    assert found.means is not None
    np.testing.assert_allclose(found.means, means, rtol=1e-12)
    np.testing.assert_allclose(base, model.intercept_ + model.coef_ @ means, rtol=1e-12)
    terms = (transformed(pipeline, data[1]) - means)[:, :, None] * model.coef_.T[None]
    np.testing.assert_allclose(contributions, terms, rtol=0, atol=1e-12)


def test_binary_logistic_regression_has_one_output_per_class() -> None:
    data = breast_cancer()
    pipeline = fitted(scaled(LogisticRegression(max_iter=1000)), data)
    found, base, contributions = explained(pipeline, data)
    assert (found.space, found.classes, len(found.base_values)) == ("log-odds", [0, 1], 1)
    assert_additive(pipeline, data, found, base, contributions)
    np.testing.assert_array_equal(base[0], -base[1])
    np.testing.assert_array_equal(contributions[:, :, 0], -contributions[:, :, 1])
    margin = pipeline.decision_function(data[1])
    np.testing.assert_allclose(base[1] + contributions[:, :, 1].sum(axis=1), margin, atol=1e-9)


def test_ridge_regression() -> None:
    data = diabetes()
    pipeline = fitted(scaled(Ridge(alpha=1.0)), data)
    found, base, contributions = explained(pipeline, data)
    assert (found.method, found.space, found.classes) == ("linear", "value", None)
    assert_additive(pipeline, data, found, base, contributions)


def test_mixed_logistic_regression_sums_one_hot_terms_into_their_feature() -> None:
    data = mixed()
    pipeline = fitted(mixed_pipeline(LogisticRegression(max_iter=1000)), data)
    found, base, contributions = explained(pipeline, data)
    assert contributions.shape == (len(data[1]), 4, 2)
    assert_additive(pipeline, data, found, base, contributions)
    # Reference from the encoder's own column names, not from the groups under test.
    means = transformed(pipeline, data[0]).mean(axis=0)
    terms = (transformed(pipeline, data[1]) - means) * pipeline[-1].coef_[0]
    columns = pipeline[:-1].get_feature_names_out()
    for f, name in enumerate(MIXED_NAMES):
        prefix = f"numeric__{name}" if name.startswith("num") else f"categorical__{name}_"
        mine = np.array([c == prefix or c.startswith(prefix) for c in columns])
        assert mine.sum() == (1 if name.startswith("num") else len(set(data[0][name]))), name
        np.testing.assert_allclose(contributions[:, f, 1], terms[:, mine].sum(axis=1), atol=1e-12)
        np.testing.assert_allclose(contributions[:, f, 0], -terms[:, mine].sum(axis=1), atol=1e-12)


# --- trees -----------------------------------------------------------------------------------


def case(dataset: Callable[[], Data], make: Callable[[], Any], space: str, name: str) -> Any:
    return pytest.param(dataset, make, space, id=name)


TREE_CASES = [
    case(breast_cancer, lambda: RandomForestClassifier(20, random_state=0), "probability", "rf"),
    case(breast_cancer, lambda: ExtraTreesClassifier(20, random_state=0), "probability", "et"),
    case(breast_cancer, lambda: GradientBoostingClassifier(random_state=0), "log-odds", "gb"),
    case(breast_cancer, lambda: HistGradientBoostingClassifier(max_iter=50), "log-odds", "hgb"),
    case(iris, lambda: DecisionTreeClassifier(random_state=0), "probability", "tree-multiclass"),
    case(iris, lambda: HistGradientBoostingClassifier(max_iter=30), "logit", "hgb-multiclass"),
    case(diabetes, lambda: RandomForestRegressor(20, random_state=0), "value", "rf-regressor"),
    case(diabetes, lambda: GradientBoostingRegressor(random_state=0), "value", "gb-regressor"),
    case(diabetes, lambda: HistGradientBoostingRegressor(max_iter=50), "value", "hgb-regressor"),
]


@pytest.mark.parametrize(("dataset", "make", "space"), TREE_CASES)
def test_trees_are_shaps_tree_path_dependent_values(
    shap: Any, dataset: Callable[[], Data], make: Callable[[], Any], space: str
) -> None:
    data = dataset()
    pipeline = fitted(scaled(make()), data)
    found, base, contributions = explained(pipeline, data)
    assert (found.method, found.space, found.means) == ("tree", space, None)
    assert_additive(pipeline, data, found, base, contributions)
    reference = shap_reference(shap, pipeline[-1], transformed(pipeline, data[1]))
    np.testing.assert_allclose(contributions, as_outputs(reference, found), rtol=0, atol=TOLERANCE)


def test_multiclass_gradient_boosting_is_explained_per_class(shap: Any) -> None:
    # shap reads only binary GradientBoostingClassifier itself; the per-class trees are
    # described to it instead.
    data = iris()
    pipeline = fitted(scaled(GradientBoostingClassifier(n_estimators=30, random_state=0)), data)
    found, base, contributions = explained(pipeline, data)
    assert (found.space, len(found.base_values)) == ("logit", 3)
    assert_additive(pipeline, data, found, base, contributions)


def test_described_gradient_boosting_trees_match_shaps_own_reading(shap: Any) -> None:
    data = breast_cancer()
    model = fitted(scaled(GradientBoostingClassifier(n_estimators=30, random_state=0)), data)[-1]
    Xt = StandardScaler().fit(data[0]).transform(data[1])
    described = shap.TreeExplainer(
        _gradient_boosting_trees(model), feature_perturbation="tree_path_dependent"
    )
    own = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
    np.testing.assert_allclose(
        described.shap_values(Xt, check_additivity=False),
        own.shap_values(Xt, check_additivity=False),
        rtol=0,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        np.ravel(described.expected_value), np.ravel(own.expected_value), atol=1e-12
    )


def test_mixed_random_forest_sums_one_hot_shap_values_into_their_feature(shap: Any) -> None:
    data = mixed()
    pipeline = fitted(mixed_pipeline(RandomForestClassifier(n_estimators=20, random_state=0)), data)
    found, base, contributions = explained(pipeline, data)
    assert contributions.shape == (len(data[1]), 4, 2)
    assert_additive(pipeline, data, found, base, contributions)
    reference = shap_reference(shap, pipeline[-1], transformed(pipeline, data[1]))
    columns = pipeline[:-1].get_feature_names_out()
    for f, name in enumerate(MIXED_NAMES):
        prefix = f"numeric__{name}" if name.startswith("num") else f"categorical__{name}_"
        mine = np.array([c == prefix or c.startswith(prefix) for c in columns])
        np.testing.assert_allclose(
            contributions[:, f, :], reference[:, mine, :].sum(axis=1), rtol=0, atol=TOLERANCE
        )


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (KNeighborsClassifier(), "KNeighborsClassifier"),
        (SVC(kernel="rbf"), "SVC"),
    ],
)
def test_models_without_an_exact_method_are_refused_by_name(model: Any, name: str) -> None:
    data = iris()
    pipeline = fitted(scaled(model), data)
    with pytest.raises(UnsupportedExplanation, match=rf"^{name} .*supported: linear models"):
        background(pipeline, data[0], data[4])


def test_a_linear_model_with_a_link_function_is_refused() -> None:
    # coef_ and intercept_ alone do not make predict linear: Poisson regression is exp of it.
    data = diabetes()
    pipeline = fitted(scaled(PoissonRegressor(max_iter=1000)), data)
    with pytest.raises(UnsupportedExplanation, match=r"PoissonRegressor .*differs from its value"):
        background(pipeline, data[0], data[4])


def test_boosted_trees_with_a_link_function_are_refused() -> None:
    data = diabetes()
    model = HistGradientBoostingRegressor(loss="poisson", max_iter=10, random_state=0)
    pipeline = fitted(scaled(model), data)
    with pytest.raises(UnsupportedExplanation, match=r"HistGradientBoostingRegressor .*'poisson'"):
        background(pipeline, data[0], data[4])


def test_preprocessing_without_an_exact_mapping_is_refused_by_name() -> None:
    data = iris()
    pipeline = Pipeline(
        [("poly", PolynomialFeatures()), ("model", LogisticRegression(max_iter=1000))]
    )
    fitted(pipeline, data)
    with pytest.raises(UnsupportedExplanation, match="PolynomialFeatures"):
        background(pipeline, data[0], data[4])


# --- groups ----------------------------------------------------------------------------------


def test_groups_follow_one_hot_drop_and_dropped_or_indicated_imputer_columns() -> None:
    frame = pd.DataFrame(
        {
            "a": [1.0, np.nan, 3.0, 4.0],
            "empty": [np.nan] * 4,
            "kind": ["x", "y", "z", "x"],
            "flag": ["on", "off", "on", "off"],
        }
    )
    numeric = SimpleImputer(strategy="mean", add_indicator=True)
    encoder = OneHotEncoder(drop="if_binary", sparse_output=False)
    prep = ColumnTransformer(
        [("numeric", numeric, ["a", "empty"]), ("categorical", encoder, ["kind", "flag"])]
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping features without any observed")
        width = prep.fit_transform(frame).shape[1]
    groups = column_groups(prep, ["flag", "kind", "a", "empty"])
    # a; a's and empty's missing indicators; kind's three categories; flag's one column.
    assert groups == [2, 2, 3, 1, 1, 1, 0]
    assert len(groups) == width


def test_groups_of_no_preprocessing_and_of_a_first_category_drop() -> None:
    assert column_groups(None, ["a", "b"]) == [0, 1]
    assert column_groups(Pipeline([("model", Ridge())])[:-1], ["a", "b"]) == [0, 1]
    encoder = OneHotEncoder(drop="first").fit(np.array([[0, 5], [1, 6], [2, 5]]))
    assert column_groups(encoder, ["a", "b"]) == [0, 0, 1]


# --- background and explainer ----------------------------------------------------------------


def test_background_json_round_trip_is_exact(shap: Any) -> None:
    for data, pipeline in [
        (mixed(), mixed_pipeline(LogisticRegression(max_iter=1000))),
        (mixed(), mixed_pipeline(RandomForestClassifier(n_estimators=5, random_state=0))),
        (diabetes(), scaled(Ridge())),
    ]:
        fitted(pipeline, data)
        found = background(pipeline, data[0], data[4])
        text = json.dumps(found.to_json(), allow_nan=False)
        again = Background.from_json(json.loads(text))
        assert again == found
        first = Explainer(pipeline, found).explain(data[1])
        second = Explainer(pipeline, again).explain(data[1])
        np.testing.assert_array_equal(first[1], second[1])


def test_a_malformed_background_document_is_refused() -> None:
    data = diabetes()
    pipeline = fitted(scaled(Ridge()), data)
    document = background(pipeline, data[0], data[4]).to_json()
    for key, value in [("method", "kernel"), ("groups", [0, 99]), ("means", None)]:
        with pytest.raises(ValueError, match="explanation background"):
            Background.from_json({**document, key: value})


def test_a_background_of_another_model_is_refused(shap: Any) -> None:
    data = breast_cancer()
    one = fitted(scaled(RandomForestClassifier(n_estimators=5, random_state=0)), data)
    other = fitted(scaled(RandomForestClassifier(n_estimators=5, random_state=1)), data)
    with pytest.raises(ValueError, match="base values"):
        Explainer(other, background(one, data[0], data[4]))
    linear = fitted(scaled(LogisticRegression(max_iter=1000)), data)
    with pytest.raises(ValueError, match="linear method"):
        Explainer(one, background(linear, data[0], data[4]))
    stronger = fitted(scaled(LogisticRegression(C=100.0, max_iter=5000)), data)
    with pytest.raises(ValueError, match="base values"):
        Explainer(stronger, background(linear, data[0], data[4]))


def test_outputs_selects_and_orders_the_outputs() -> None:
    data = iris()
    pipeline = fitted(scaled(LogisticRegression(max_iter=1000)), data)
    explainer = Explainer(pipeline, background(pipeline, data[0], data[4]))
    base, contributions = explainer.explain(data[1])
    picked_base, picked = explainer.explain(data[1], np.array([2, 0]))
    np.testing.assert_array_equal(picked_base, base[[2, 0]])
    np.testing.assert_array_equal(picked, contributions[:, :, [2, 0]])
    with pytest.raises(ValueError, match="out of range"):
        explainer.explain(data[1], np.array([3]))


def test_a_single_row_is_explained() -> None:
    data = breast_cancer()
    pipeline = fitted(scaled(LogisticRegression(max_iter=1000)), data)
    explainer = Explainer(pipeline, background(pipeline, data[0], data[4]))
    base, contributions = explainer.explain(data[1][:1])
    assert contributions.shape == (1, 30, 2)
    total = base + contributions.sum(axis=1)
    expected = pipeline.decision_function(data[1][:1])[0]
    np.testing.assert_allclose(total, [[-expected, expected]], atol=TOLERANCE)


def test_importing_the_package_loads_neither_scikit_learn_nor_shap() -> None:
    code = (
        "import sys, serving.explain\n"
        "print(sorted(m for m in ('sklearn', 'shap', 'fastapi', 'serving.http')"
        " if m in sys.modules))"
    )
    assert python_prints(code) == "[]"

"""Training specs: TOML files that say dataset, features, target, estimator and evaluation."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.store import FeatureKind, InvalidNameError, Task, validate_name

SPECS_DIR = Path(__file__).parent / "specs"

METRICS_HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "f1_macro": True,
    "roc_auc": True,
    "r2": True,
    "rmse": False,
    "mae": False,
}
CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "roc_auc")
REGRESSION_METRICS = ("rmse", "mae", "r2")


class SpecError(Exception):
    """A spec that cannot be read or is invalid; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSection(_Section):
    source: str | None = None
    """A bundled scikit-learn dataset as ``sklearn:<name>`` (iris, breast_cancer, diabetes,
    wine), or None when ``path`` is given."""
    path: str | None = None
    """A CSV file; relative paths are resolved against the spec file's folder."""
    target: str
    """The column to predict."""

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSection:
        if (self.source is None) == (self.path is None):
            raise ValueError("give exactly one of dataset.source or dataset.path")
        return self


class FeaturesSection(_Section):
    include: list[str] | None = None
    """Feature columns in the order the model takes them; default: every column but the target."""
    exclude: list[str] = Field(default_factory=list)
    """Columns to drop (ids, leaky columns)."""
    kinds: dict[str, FeatureKind] = Field(default_factory=dict)
    """Override the inferred kind of a column (numeric, integer, boolean, categorical)."""
    allow_missing: list[str] = Field(default_factory=list)
    """Numeric, integer or boolean columns whose missing-value markers (empty, ``NA``, ``n/a``,
    ``null``, ``NaN``, ``?``, ...) are read as missing and imputed; in any other such column a
    marker refuses the data, so nothing becomes missing without the spec saying so."""


class EstimatorSection(_Section):
    class_: str = Field(alias="class")
    """Import path of a scikit-learn estimator, e.g. ``sklearn.ensemble.RandomForestClassifier``."""
    params: dict[str, Any] = Field(default_factory=dict)


class PreprocessingSection(_Section):
    scale: bool = True
    """Standardise numeric features (mean 0, std 1)."""
    one_hot: bool = True
    """One-hot encode categorical features (unknown categories are ignored at predict time)."""
    impute: Literal["median", "mean"] = "median"
    """How missing numeric values are filled, for features that have any in training."""


class SplitSection(_Section):
    test_size: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 42
    stratify: bool = True
    """Stratify the holdout and the folds by class (classification only)."""
    folds: int = Field(5, ge=2, le=50)
    """Cross-validation folds on the training part (the holdout is never in them)."""
    group_column: str | None = None
    """Rows sharing a value of this column stay on one side of every split (GroupKFold); the
    column is not a feature."""
    time_column: str | None = None
    """Rows are ordered by this column: the holdout is the latest ``test_size`` share and the
    folds are time-ordered (TimeSeriesSplit, each fold validated on rows later than its
    training rows); the column is not a feature."""

    @model_validator(mode="after")
    def _one_ordering(self) -> SplitSection:
        if self.group_column is not None and self.time_column is not None:
            raise ValueError("give at most one of split.group_column and split.time_column")
        return self


class Distribution(_Section):
    """A random search's distribution for one parameter."""

    distribution: Literal["uniform", "loguniform", "randint"]
    low: float
    high: float

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if not self.low < self.high:
            raise ValueError("a distribution needs low < high")
        if self.distribution == "loguniform" and self.low <= 0:
            raise ValueError("a loguniform distribution needs low > 0")
        return self


class EvaluationSection(_Section):
    task: Task | None = None
    """Default: inferred from the estimator."""
    primary_metric: str | None = None
    """Metric the promotion gate compares; default f1_macro (classification) or rmse."""
    tolerance: float = Field(0.0, ge=0.0)
    """The smallest improvement of the primary metric (absolute, mean over folds) worth a
    promotion; a candidate must also beat production beyond fold noise (training/gate.py)."""
    significance: float = Field(0.05, gt=0.0, lt=0.5)
    """Level of the one-sided paired test over folds that the gate applies."""


class SearchSection(_Section):
    """A hyper-parameter search around the spec's estimator; the best candidate is trained."""

    kind: Literal["grid", "random"] = "grid"
    n_iter: int = Field(10, ge=1)
    """Candidates drawn by a random search."""
    scoring: str | None = None
    """Metric the search ranks by (one of the metric names); default: the primary metric."""
    seed: int = 0
    """Seed of a random search's draws."""
    params: dict[str, list[Any] | Distribution]
    """Pipeline parameter names (``model__C``; a name without ``__`` is the estimator's) to
    lists of values, or (random search) distributions."""

    @model_validator(mode="after")
    def _check(self) -> SearchSection:
        if not self.params:
            raise ValueError("search.params is empty")
        for name, values in self.params.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"search.params.{name} is an empty list")
            if self.kind == "grid" and not isinstance(values, list):
                raise ValueError(
                    f"search.params.{name}: a grid search takes lists of values; "
                    'distributions need kind = "random"'
                )
        if self.scoring is not None and self.scoring not in METRICS_HIGHER_IS_BETTER:
            raise ValueError(
                f"search.scoring {self.scoring!r} is not one of "
                f"{', '.join(sorted(METRICS_HIGHER_IS_BETTER))}"
            )
        return self


class CaptureSection(_Section):
    """Retraining from traffic: the labelled predictions the service captured for this model
    (serving/capture), checked against the production version's features and target."""

    use: Literal["none", "only", "with_original"] = "none"
    """``none``: the dataset only; ``only``: the labelled captured rows only; ``with_original``:
    the dataset's rows plus the labelled captured rows (the holdout is traffic either way)."""
    holdout: float = Field(0.25, gt=0.0, lt=1.0)
    """Share of the labelled captured rows, the most recent by prediction time, held out: the
    gate compares the candidate with production as served on them (``split.test_size`` and
    the random holdout do not apply)."""
    min_rows: int = Field(50, ge=10)
    """Fewest usable labelled captured rows (after refusals and de-duplication) to train on."""


class Spec(_Section):
    """A validated training spec."""

    name: str
    description: str = ""
    dataset: DatasetSection
    features: FeaturesSection = FeaturesSection()
    estimator: EstimatorSection
    preprocessing: PreprocessingSection = PreprocessingSection()
    split: SplitSection = SplitSection()
    evaluation: EvaluationSection = EvaluationSection()
    search: SearchSection | None = None
    capture: CaptureSection = CaptureSection()
    base_dir: str = Field(".", exclude=True)
    """Folder relative dataset paths resolve against (the spec file's folder)."""

    @model_validator(mode="after")
    def _check(self) -> Spec:
        try:
            validate_name(self.name)
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from None
        metric = self.evaluation.primary_metric
        if metric is not None and metric not in METRICS_HIGHER_IS_BETTER:
            raise ValueError(
                f"evaluation.primary_metric {metric!r} is not one of "
                f"{', '.join(sorted(METRICS_HIGHER_IS_BETTER))}"
            )
        return self

    def dataset_path(self) -> Path | None:
        if self.dataset.path is None:
            return None
        path = Path(self.dataset.path)
        return path if path.is_absolute() else Path(self.base_dir) / path

    def to_dict(self) -> dict[str, Any]:
        """The spec as recorded in the manifest (TOML-shaped). Without a capture section when
        it is off, so versions trained before it existed still compare as identical."""
        data = self.model_dump(mode="json", by_alias=True)
        if self.capture.use == "none":
            del data["capture"]
        return data

    def with_overrides(self, overrides: dict[str, Any]) -> Spec:
        """A copy with ``overrides`` deep-merged in, e.g. {"estimator": {"params": {...}}}."""
        data = _deep_merge(self.model_dump(mode="json", by_alias=True), overrides)
        data["base_dir"] = self.base_dir
        return parse_spec(data, origin=f"{self.name} (with overrides)")


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_spec(data: dict[str, Any], *, origin: str) -> Spec:
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  - {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SpecError(f"invalid spec {origin}:\n{problems}") from None


def load_spec(path: Path | str) -> Spec:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec {path} is not valid TOML: {exc}") from None
    data["base_dir"] = str(path.resolve().parent)
    return parse_spec(data, origin=str(path))


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.toml"))


def shipped_spec(name: str) -> Spec:
    path = SPECS_DIR / f"{name}.toml"
    if not path.is_file():
        raise SpecError(f"no shipped spec named {name!r}; shipped: {', '.join(shipped_names())}")
    return load_spec(path)


# Short names for ``make train DATA=... TARGET=... ESTIMATOR=name``: (classifier, regressor)
# import paths and their parameters; None where the name has no such variant.
ESTIMATORS: dict[str, tuple[str | None, str | None, dict[str, Any]]] = {
    "random_forest": (
        "sklearn.ensemble.RandomForestClassifier",
        "sklearn.ensemble.RandomForestRegressor",
        {"n_estimators": 100, "random_state": 0},
    ),
    "extra_trees": (
        "sklearn.ensemble.ExtraTreesClassifier",
        "sklearn.ensemble.ExtraTreesRegressor",
        {"n_estimators": 100, "random_state": 0},
    ),
    "gradient_boosting": (
        "sklearn.ensemble.GradientBoostingClassifier",
        "sklearn.ensemble.GradientBoostingRegressor",
        {"random_state": 0},
    ),
    "hist_gradient_boosting": (
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "sklearn.ensemble.HistGradientBoostingRegressor",
        {"random_state": 0},
    ),
    "logistic_regression": ("sklearn.linear_model.LogisticRegression", None, {"max_iter": 1000}),
    "linear_regression": (None, "sklearn.linear_model.LinearRegression", {}),
    "ridge": (None, "sklearn.linear_model.Ridge", {}),
    "knn": (
        "sklearn.neighbors.KNeighborsClassifier",
        "sklearn.neighbors.KNeighborsRegressor",
        {},
    ),
}
DEFAULT_ESTIMATOR = "random_forest"


def estimator_names(task: Task) -> list[str]:
    """The short estimator names that exist for ``task``."""
    slot = 0 if task == Task.CLASSIFICATION else 1
    return [name for name, entry in ESTIMATORS.items() if entry[slot] is not None]


def adhoc_csv_spec(
    data: Path, target: str, task: Task, name: str | None, estimator: str | None = None
) -> Spec:
    """A spec for ``make train DATA=file.csv TARGET=column [ESTIMATOR=name]`` with defaults."""
    model_name = name or _slug(data.stem)
    short = estimator or DEFAULT_ESTIMATOR
    entry = ESTIMATORS.get(short)
    path = None if entry is None else entry[0 if task == Task.CLASSIFICATION else 1]
    if entry is None or path is None:
        raise SpecError(
            f"unknown estimator {short!r} for {task.value}; choose one of: "
            + ", ".join(estimator_names(task))
        )
    return parse_spec(
        {
            "name": model_name,
            "description": f"Ad-hoc model trained from {data.name}, target {target!r}.",
            "dataset": {"path": str(data.resolve()), "target": target},
            "estimator": {"class": path, "params": dict(entry[2])},
            "evaluation": {"task": task.value},
        },
        origin=f"ad-hoc spec for {data}",
    )


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "_-" else "_" for c in text.strip())
    return out.strip("_-") or "model"

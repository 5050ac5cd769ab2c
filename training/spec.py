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
    """Stratify the holdout by class (classification only)."""


class EvaluationSection(_Section):
    task: Task | None = None
    """Default: inferred from the estimator."""
    primary_metric: str | None = None
    """Metric the promotion gate compares; default f1_macro (classification) or rmse."""
    tolerance: float = Field(0.0, ge=0.0)
    """A new version is promoted when its primary metric is at most this much worse than
    production's (absolute difference)."""


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
        """The spec as recorded in the manifest (TOML-shaped)."""
        return self.model_dump(mode="json", by_alias=True)

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


def adhoc_csv_spec(data: Path, target: str, task: Task, name: str | None) -> Spec:
    """A spec for ``make train DATA=file.csv TARGET=column``: a random forest with defaults."""
    model_name = name or _slug(data.stem)
    estimator = (
        "sklearn.ensemble.RandomForestRegressor"
        if task == Task.REGRESSION
        else "sklearn.ensemble.RandomForestClassifier"
    )
    return parse_spec(
        {
            "name": model_name,
            "description": f"Ad-hoc model trained from {data.name}, target {target!r}.",
            "dataset": {"path": str(data.resolve()), "target": target},
            "estimator": {"class": estimator, "params": {"n_estimators": 100, "random_state": 0}},
            "evaluation": {"task": task.value},
        },
        origin=f"ad-hoc spec for {data}",
    )


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "_-" else "_" for c in text.strip())
    return out.strip("_-") or "model"

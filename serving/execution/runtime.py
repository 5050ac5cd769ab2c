"""Turn encoded rows into model input and run the model: ONNX Runtime or scikit-learn.

Rows travel between processes as one float64 2-D array in manifest feature order: numeric,
integer and boolean values as numbers (booleans 0/1), categorical values as the index of the
category in the manifest, missing values as NaN. This keeps inter-process messages small and
cheap to pickle; the worker turns the array back into what the model was trained on.
Used by pool workers and by inline mode alike.

Which runtime serves a model (:func:`load`): ONNX Runtime when the manifest records an ONNX
file that passed the parity check at training time and the policy allows it, scikit-learn
otherwise (no ONNX file, parity failed, onnxruntime missing, or forced by a setting).

Both runtimes compute with the same number of threads (``RuntimePolicy.onnx_threads``): ONNX
Runtime as its intra-op threads, scikit-learn as the ``n_jobs`` of every estimator that has one
(set here, on the loaded copy: a forest fitted with ``n_jobs=-1`` would otherwise predict on
every core) and, in pool workers, as the BLAS and OpenMP thread limit
(``serving.execution.pool``). So neither runtime oversubscribes the box, and neither gets more
cores than the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from serving.couplings.sklearn_forest import votes_by_probabilities
from serving.store import FeatureKind, Manifest, ModelStore, StoreError, Task

if TYPE_CHECKING:
    from serving.explain import Explainer

log = logging.getLogger("servewell.runtime")

FloatArray = npt.NDArray[np.float64]
RuntimeName = Literal["onnx", "sklearn"]


@dataclass(frozen=True)
class Contributions:
    """Exact feature contributions of a batch's rows (serving.explain): for every output (a
    class of a classifier, the value of a regressor) ``base[k] + values[i, :, k].sum()`` is
    row ``i``'s output ``k`` in the manifest's ``explain.space``."""

    base: FloatArray
    """(outputs,): the expected output over the training rows."""
    values: FloatArray
    """(rows, input features in manifest order, outputs)."""

    def __getitem__(self, rows: slice) -> Contributions:
        return Contributions(self.base, self.values[rows])


@dataclass(frozen=True)
class Prediction:
    """Outputs for a batch of rows: labels or values, and class probabilities if asked."""

    predictions: npt.NDArray[Any]
    probabilities: FloatArray | None
    warnings: tuple[str, ...] = ()
    """What the caller should know about its rows (e.g. features outside the training range)."""
    contributions: Contributions | None = None
    """Asked for with ``explain``: why each row got its outputs."""


class ExplanationUnavailable(Exception):  # noqa: N818 - a condition, not a crash
    """The version has no explanation background, or explaining it failed to set up."""


@dataclass(frozen=True)
class RuntimePolicy:
    """Which runtime may serve which model; sent to every worker process."""

    prefer_onnx: bool = True
    sklearn_models: frozenset[str] = field(default_factory=frozenset)
    """Models that always run on scikit-learn, whatever their manifest says."""
    onnx_threads: int = 1
    """Threads each loaded model computes with, whichever the runtime: intra-op threads of an
    ONNX Runtime session; ``n_jobs`` (and, in pool workers, BLAS/OpenMP threads) of
    scikit-learn."""

    def allows_onnx(self, name: str) -> bool:
        return self.prefer_onnx and name not in self.sklearn_models

    def expects_onnx(self, manifest: Manifest) -> bool:
        """Whether :func:`load` serves this version on ONNX Runtime (unless the runtime then
        fails to open the graph): the policy allows it and training stored a verified graph."""
        return self.allows_onnx(manifest.name) and manifest.onnx is not None


def production_on_sklearn(store: ModelStore, policy: RuntimePolicy) -> list[str]:
    """The store's models whose production version will run on scikit-learn, by their
    manifests and ``policy`` (none when the store cannot be read: loading reports that)."""
    names = []
    try:
        for name in store.names():
            version = store.production(name)
            if version is not None and not policy.expects_onnx(store.manifest(name, version)):
                names.append(name)
    except (StoreError, OSError):
        return []
    return names


class LoadedModel:
    """A model ready to predict encoded rows, with the runtime that serves it."""

    def __init__(
        self,
        manifest: Manifest,
        predictor: Any,
        runtime: RuntimeName,
        explainer: Callable[[], Explainer] | None = None,
    ) -> None:
        self.manifest = manifest
        self._make_explainer = explainer
        """Builds the explainer on the first explained batch: the scikit-learn pipeline and
        shap's tree structures cost memory that models nobody asks to explain never pay."""
        self._explainer: Explainer | None = None
        self._unavailable: ExplanationUnavailable | None = None
        """Why building the explainer failed (it is not tried again)."""
        self.predictor = predictor
        """A fitted scikit-learn estimator, or a serving.execution.onnx_runtime.OnnxModel."""
        self.runtime: RuntimeName = runtime
        self._vote = runtime == "sklearn" and votes_by_probabilities(predictor)
        """Its predict is the argmax of its predict_proba, by scikit-learn's own code."""
        self.labels: npt.NDArray[Any] | None = None
        """What the class indices of :meth:`predict_coded` stand for (None: a regressor)."""
        if runtime == "onnx":
            self.labels = predictor.labels
        elif manifest.task == Task.CLASSIFICATION and hasattr(predictor, "classes_"):
            # (A spec may evaluate an estimator without classes_ as a classifier; its labels
            # then never come as positions.)
            self.labels = np.asarray(predictor.classes_)
        self._by_name = manifest.input_format == "dataframe"
        self._columns = manifest.feature_names
        # Categorical columns: index -> object array of labels (with None for missing at the end).
        self._categorical = {
            i: np.array([*(f.categories or []), None], dtype=object)
            for i, f in enumerate(manifest.features)
            if f.kind == FeatureKind.CATEGORICAL
        }

    def _columns_of(self, rows: FloatArray) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for i, name in enumerate(self._columns):
            column = rows[:, i]
            labels = self._categorical.get(i)
            if labels is None:
                data[name] = column
            else:
                missing = np.isnan(column)
                index = np.where(missing, len(labels) - 1, np.nan_to_num(column)).astype(np.intp)
                data[name] = labels[index]
        return data

    def model_input(self, rows: FloatArray, sklearn: bool = False) -> Any:
        """What the predictor (or, with ``sklearn``, the scikit-learn pipeline) takes: the float
        array itself, or named columns (a DataFrame typed like the training table for
        scikit-learn; a dict of arrays for ONNX Runtime, which needs no DataFrame)."""
        if not self._by_name:
            return rows
        columns = self._columns_of(rows)
        if self.runtime == "onnx" and not sklearn:
            return columns
        import pandas as pd

        return pd.DataFrame(columns, columns=self._columns)

    def predict(
        self, rows: FloatArray, want_probabilities: bool, explain: bool = False
    ) -> Prediction:
        """Predict a batch; probabilities only for classifiers and only when asked;
        contributions with ``explain``."""
        values, probabilities, indexed = self.predict_coded(rows, want_probabilities)
        if indexed:
            labels = self.labels
            assert labels is not None
            values = labels.take(values, axis=0)
        return Prediction(
            values, probabilities, contributions=self.explain(rows) if explain else None
        )

    def explain(self, rows: FloatArray) -> Contributions:
        """Every output's contributions for a batch of rows (raises ExplanationUnavailable when
        the version has no background or it does not fit the model)."""
        explainer = self._explainer
        if explainer is None:
            if self._unavailable is not None:
                raise self._unavailable
            if self._make_explainer is None:
                raise ExplanationUnavailable(
                    f"{self.manifest.name} v{self.manifest.version} has no explanations"
                )
            try:
                explainer = self._explainer = self._make_explainer()
            except Exception as exc:
                # Kept: the next request must not re-read and re-hash the whole version.
                m = self.manifest
                why = f"{m.name} v{m.version}: {type(exc).__name__}: {exc}"
                self._unavailable = ExplanationUnavailable(why)
                raise self._unavailable from exc
        # Rows far outside the training range can overflow in the pipeline's arithmetic: the
        # non-finite contributions are refused later, like outputs, so numpy need not warn
        # (where warnings are errors, inline, that would fail the whole batch).
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            base, values = explainer.explain(self.model_input(rows, sklearn=True))
        return Contributions(base, values)

    def predict_coded(
        self, rows: FloatArray, want_probabilities: bool
    ) -> tuple[npt.NDArray[Any], FloatArray | None, bool]:
        """As :meth:`predict`, but a classifier's labels may come as their positions in
        :attr:`labels` (the third value says when): what crosses the pool's process boundary,
        numbers instead of one object per row."""
        features = self.model_input(rows)
        if self.runtime == "onnx":
            values, probabilities, indexed = self.predictor.predict_indexed(
                features, want_probabilities
            )
            return values, probabilities if want_probabilities else None, indexed
        if want_probabilities and self._vote:
            # A forest's predict computes exactly these probabilities and takes their argmax:
            # one pass over the trees instead of two, the same labels.
            scores = np.asarray(self.predictor.predict_proba(features), dtype=np.float64)
            return np.argmax(scores, axis=1), scores, True
        predictions = np.asarray(self.predictor.predict(features))
        probabilities = None
        if want_probabilities:
            probabilities = np.asarray(self.predictor.predict_proba(features), dtype=np.float64)
        return predictions, probabilities, False


def load(store: ModelStore, name: str, version: int, policy: RuntimePolicy) -> LoadedModel:
    """Verify a version's files, load it into the runtime the policy and manifest allow, and
    predict one row with it: a version that cannot predict is a load failure, not served.

    Only the bytes the store verified are deserialised; no path is opened again."""
    verified = store.read_version(name, version, onnx=policy.allows_onnx(name))
    manifest = verified.manifest
    model: LoadedModel | None = None
    if verified.onnx is not None:
        from serving.execution.onnx_runtime import OnnxIO, OnnxModel, ServingGraphs

        try:
            onnx = OnnxModel(
                OnnxIO.of(manifest),
                verified.onnx,
                threads=policy.onnx_threads,
                prepared=ServingGraphs.of(verified),
            )
        except Exception as exc:  # e.g. onnxruntime missing or too old for the graph
            log.warning(
                "%s v%s: ONNX Runtime unavailable (%s); using scikit-learn", name, version, exc
            )
        else:
            model = LoadedModel(
                manifest, onnx, "onnx", _explainer(store, manifest, policy.onnx_threads)
            )
    if model is None:
        use_sklearn(policy.onnx_threads)
        estimator = verified.estimator()
        cap_jobs(estimator, policy.onnx_threads)
        explainer = _explainer(store, manifest, policy.onnx_threads, estimator)
        model = LoadedModel(manifest, estimator, "sklearn", explainer)
    warm_up(model)
    return model


def _explainer(
    store: ModelStore, manifest: Manifest, threads: int, estimator: Any = None
) -> Callable[[], Explainer] | None:
    """What builds a version's explainer when first asked: the background (and, for a model
    served by ONNX Runtime, the scikit-learn pipeline) read and verified from the store then."""
    if not manifest.explainable:
        return None

    def build() -> Explainer:
        import json

        from serving.explain import Background, Explainer

        name, version = manifest.name, manifest.version
        verified = store.read_version(name, version, model=estimator is None, explain=True)
        document = verified.background
        if document is None:
            raise ExplanationUnavailable(f"{name} v{version} has no explanation background")
        pipeline = estimator
        if pipeline is None:
            use_sklearn(threads)
            pipeline = verified.estimator()
            cap_jobs(pipeline, threads)
        return Explainer(pipeline, Background.from_json(json.loads(document)))

    return build


def use_sklearn(threads: int) -> None:
    """Configure scikit-learn, before a scikit-learn pipeline is loaded. Not at start: a
    worker whose versions all run on ONNX Runtime never imports it (about 100 MB of RSS).

    Finiteness is checked at the edge, so skipping scikit-learn's re-check changes no
    result. The thread limit is set again because the OpenMP runtime scikit-learn brings is
    loaded only now (the same budget as ONNX Runtime's sessions get)."""
    import sklearn
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    sklearn.set_config(assume_finite=True)
    threadpool_limits(threads)


class WarmUpError(Exception):
    """A loaded model failed to predict one typical row: it is not served."""


def warm_up(model: LoadedModel) -> None:
    """Predict one row of training-like values (first calls are slow, and a model that fails
    here would fail every request)."""
    try:
        model.predict(typical_row(model.manifest), False)
    except Exception as exc:
        raise WarmUpError(f"the warm-up prediction failed: {type(exc).__name__}: {exc}") from exc


def typical_row(manifest: Manifest) -> FloatArray:
    """One encoded row: each feature's training example (or mean), categories by index."""
    row = np.zeros((1, len(manifest.features)))
    for i, feature in enumerate(manifest.features):
        example = feature.example
        if feature.kind == FeatureKind.CATEGORICAL:
            categories = feature.categories or []
            row[0, i] = categories.index(example) if example in categories else 0.0
        elif isinstance(example, int | float) and np.isfinite(example):
            row[0, i] = float(example)
        elif feature.mean is not None and np.isfinite(feature.mean):
            row[0, i] = feature.mean
    return row


def cap_jobs(estimator: Any, threads: int) -> None:
    """Set ``n_jobs`` of the estimator and of every estimator inside it to ``threads``.

    Only how many threads predict uses changes, never a result (``n_jobs`` splits work, e.g. a
    forest's trees, and the parts are added up in the same way)."""
    get_params = getattr(estimator, "get_params", None)
    if get_params is None:
        return
    jobs = {
        key: threads
        for key, value in get_params(deep=True).items()
        if (key == "n_jobs" or key.endswith("__n_jobs")) and value != threads
    }
    if jobs:
        estimator.set_params(**jobs)

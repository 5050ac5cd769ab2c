"""A served model seen as Open Inference Protocol tensors, built from its manifest.

Inputs come in one of two forms:

- one 2-D tensor named ``input``, shape ``[rows, n_features]``, columns in manifest feature
  order, any numeric datatype (booleans as 0/1); only for models without categorical
  features;
- one tensor per feature, named after the feature, shape ``[rows]`` (or ``[rows, 1]``):
  numeric features take FP*, INT* or UINT*; integer features INT* or UINT*; boolean features
  BOOL; categorical features BYTES (one of the training categories).

NaN stands for a missing value of a nullable feature; it is refused elsewhere, and so is
infinity. Outputs: ``predict`` (labels, or values for a regressor; shape ``[rows]``) and,
for classifiers, ``predict_proba`` (FP64, ``[rows, n_classes]``, columns in the class order
given in the model metadata's parameters). Only when asked by name, as they cost far more:
``explanation`` (FP64, ``[rows, 1 + n_features]``: the base value, then each input feature's
contribution, for the predicted class or a regressor's value) and ``explanation_all`` (FP64,
``[rows, n_outputs, 1 + n_features]``, every class); the metadata's parameters name the columns
and the space the numbers add up in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.codecs.explanations import tensor as explanation_tensor
from serving.codecs.oip.tensors import (
    BOOL,
    BYTES,
    FLOAT_TYPES,
    INT_TYPES,
    OutputTensor,
    RequestedOutput,
    Tensor,
    frame_texts,
    numbers_problem,
)
from serving.core.errors import InvalidInputError
from serving.execution.runtime import FloatArray, Prediction
from serving.store import Feature, FeatureKind, Manifest, Task

MATRIX_INPUT = "input"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
EXPLANATION = "explanation"
EXPLANATION_ALL = "explanation_all"
EXPLANATIONS = (EXPLANATION, EXPLANATION_ALL)
_MAX_EXACT_INT = 2**53
_NUMERIC = FLOAT_TYPES | INT_TYPES
_KIND_DATATYPE = {
    FeatureKind.NUMERIC: "FP64",
    FeatureKind.INTEGER: "INT64",
    FeatureKind.BOOLEAN: BOOL,
    FeatureKind.CATEGORICAL: BYTES,
}
_ACCEPTED = {
    FeatureKind.NUMERIC: _NUMERIC,
    FeatureKind.INTEGER: INT_TYPES,
    FeatureKind.BOOLEAN: frozenset({BOOL}),
    FeatureKind.CATEGORICAL: frozenset({BYTES}),
}


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError(message)


def _label_datatype(manifest: Manifest) -> str:
    classes = manifest.target.classes
    if manifest.task != Task.CLASSIFICATION or not classes:
        return "FP64"
    first = classes[0]
    if isinstance(first, bool):
        return BOOL
    if isinstance(first, int):
        return "INT64"
    if isinstance(first, float):
        return "FP64"
    return BYTES


class Signature:
    """What one model version takes and gives, in protocol terms."""

    def __init__(
        self, manifest: Manifest, platform: str, max_rows: int, explainable: bool = False
    ) -> None:
        self.manifest = manifest
        self.explainable = explainable
        """The served version can explain (its metadata lists the explanation outputs)."""
        self.platform = platform
        self.max_rows = max_rows
        self.features = manifest.features
        self.width = len(self.features)
        # Twice what a valid request holds: just beyond, the checks of the rows explain better.
        self.max_elements = 2 * max_rows * max(1, self.width)
        """Inputs of one request with more elements are refused before they are decoded."""
        self.index = {f.name: i for i, f in enumerate(self.features)}
        # A feature named like the 2-D tensor would make one-tensor requests ambiguous.
        self.matrix_ok = MATRIX_INPUT not in self.index and all(
            f.kind != FeatureKind.CATEGORICAL for f in self.features
        )
        self.categories = {
            i: {c: float(n) for n, c in enumerate(f.categories or [])}
            for i, f in enumerate(self.features)
            if f.kind == FeatureKind.CATEGORICAL
        }
        # What to check in a block of columns, worked out once: the whole matrix, or one.
        self._matrix_block = _Block.of(self.features, list(range(self.width)))
        self._column_blocks = [_Block.of(self.features, [i]) for i in range(self.width)]
        self.classifier = manifest.task == Task.CLASSIFICATION
        self.label_datatype = _label_datatype(manifest)
        # Text labels are framed once here, not per request (see tensors._bytes_blob).
        self.label_frames = (
            frame_texts(map(str, manifest.target.classes or []))
            if self.label_datatype == BYTES
            else None
        )
        self.outputs = [PREDICT, PREDICT_PROBA] if self.classifier else [PREDICT]

    # -- metadata ------------------------------------------------------------------------------

    def metadata(self, versions: list[int]) -> dict[str, Any]:
        """The model metadata response (``GET /v2/models/{name}[/versions/{v}]``)."""
        m = self.manifest
        if self.matrix_ok:
            inputs = [{"name": MATRIX_INPUT, "datatype": "FP64", "shape": [-1, self.width]}]
        else:
            inputs = [
                {"name": f.name, "datatype": _KIND_DATATYPE[f.kind], "shape": [-1]}
                for f in self.features
            ]
        outputs: list[dict[str, Any]] = [
            {"name": PREDICT, "datatype": self.label_datatype, "shape": [-1]}
        ]
        parameters: dict[str, Any] = {
            "task": m.task.value,
            "estimator": m.estimator,
            "feature_names": m.feature_names,
            "feature_datatypes": {f.name: _KIND_DATATYPE[f.kind] for f in self.features},
        }
        if self.classifier:
            classes = m.target.classes or []
            outputs.append({"name": PREDICT_PROBA, "datatype": "FP64", "shape": [-1, len(classes)]})
            parameters["classes"] = classes
        if self.explainable and m.explain is not None:
            columns = 1 + self.width
            n_outputs = max(1, len(m.target.classes or []))
            outputs += [
                {"name": EXPLANATION, "datatype": "FP64", "shape": [-1, columns]},
                {"name": EXPLANATION_ALL, "datatype": "FP64", "shape": [-1, n_outputs, columns]},
            ]
            parameters["explanation_space"] = m.explain.space
            parameters["explanation_columns"] = ["base", *m.feature_names]
        return {
            "name": m.name,
            "versions": [str(v) for v in versions],
            "platform": self.platform,
            "inputs": inputs,
            "outputs": outputs,
            "parameters": parameters,
        }

    # -- inputs --------------------------------------------------------------------------------

    def rows(self, inputs: list[Tensor]) -> FloatArray:
        """Decoded input tensors -> one float64 array in manifest feature order."""
        if len(inputs) == 1 and inputs[0].name == MATRIX_INPUT and MATRIX_INPUT not in self.index:
            return self._matrix(inputs[0])
        names = [t.name for t in inputs]
        unknown = [n for n in names if n not in self.index]
        if unknown:
            known = (
                f"{MATRIX_INPUT!r} (all features) or one per feature"
                if self.matrix_ok
                else ("one per feature")
            )
            raise _bad(
                f"unknown input(s) {', '.join(map(repr, unknown))}; inputs are {known}: "
                f"{', '.join(self.index)}"
            )
        if len(set(names)) != len(names):
            raise _bad("an input is given more than once")
        missing = [f.name for f in self.features if f.name not in set(names)]
        if missing:
            raise _bad(f"missing input(s): {', '.join(missing)}")
        n = self._rows_of(inputs[0])
        out = np.empty((n, self.width), dtype=np.float64)
        for tensor in inputs:
            if self._rows_of(tensor) != n:
                raise _bad(
                    f"{tensor.where}: has {self._rows_of(tensor)} rows but "
                    f"{inputs[0].where} has {n}"
                )
            i = self.index[tensor.name]
            out[:, i] = self._column(tensor, i)
        return out

    def plain_matrix(self, shape: Any, data: Any, datatype: str) -> FloatArray | None:
        """The rows of a one-tensor JSON request (``shape``, ``data`` as orjson decoded them,
        ``datatype`` already known to be numeric) when ``rows`` would accept them as they
        are; None for anything else, which ``rows`` then explains (serving.codecs.oip.plain).

        orjson refuses NaN, Infinity and numbers beyond the float range, so JSON numbers are
        finite: only the checks beyond that (nullable, integer and boolean features) can
        apply, and they run only for models that have such features."""
        if not self.matrix_ok or type(shape) is not list or len(shape) != 2:
            return None
        n, width = shape
        if type(n) is not int or width != self.width or type(width) is not int:
            return None
        if not 1 <= n <= self.max_rows:
            return None
        try:
            array = np.array(data)
        except (ValueError, TypeError):
            return None
        if array.size != n * width or numbers_problem(array, array.dtype.kind, datatype):
            return None
        if array.ndim > 1 and array.shape != (n, width):
            return None
        rows: FloatArray = array.astype(np.float64, copy=False).reshape(n, width)
        if self._matrix_block.checked:
            try:
                self._check_values(rows, self._matrix_block, None)
            except InvalidInputError:
                return None
        return rows

    def _check_rows(self, n: int, tensor: Tensor) -> None:
        if n < 1:
            raise _bad(f"{tensor.where}: no rows")
        if n > self.max_rows:
            raise _bad(f"{tensor.where}: {n} rows; at most {self.max_rows} per request")

    def _rows_of(self, tensor: Tensor) -> int:
        shape = tensor.shape
        if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
            self._check_rows(shape[0], tensor)
            return shape[0]
        raise _bad(
            f"{tensor.where}: a per-feature input has shape [rows] or [rows, 1], not {list(shape)}"
        )

    def _column(self, tensor: Tensor, i: int) -> FloatArray:
        feature = self.features[i]
        if tensor.datatype not in _ACCEPTED[feature.kind]:
            raise _bad(
                f"{tensor.where}: a {feature.kind.value} feature takes "
                f"{', '.join(sorted(_ACCEPTED[feature.kind]))}, not {tensor.datatype}"
            )
        if feature.kind == FeatureKind.CATEGORICAL:
            index = self.categories[i]
            assert isinstance(tensor.values, list)
            try:
                values = tensor.values
                return np.fromiter(map(index.__getitem__, values), np.float64, len(values))
            except KeyError as exc:
                shown = ", ".join(map(repr, list(index)[:20]))
                raise _bad(
                    f"{tensor.where}: {exc.args[0]!r:.60} is not a category of "
                    f"{feature.name} (one of {shown})"
                ) from None
        assert isinstance(tensor.values, np.ndarray)
        column = tensor.values.astype(np.float64)
        self._check_values(column[:, None], self._column_blocks[i], tensor)
        return column

    def _matrix(self, tensor: Tensor) -> FloatArray:
        if not self.matrix_ok:
            raise _bad(
                f"{tensor.where}: this model has categorical features; send one input per "
                f"feature ({', '.join(self.index)})"
            )
        shape = tensor.shape
        if len(shape) != 2 or shape[1] != self.width:
            raise _bad(
                f"{tensor.where}: shape must be [rows, {self.width}] (features: "
                f"{', '.join(self.index)}), not {list(shape)}"
            )
        self._check_rows(shape[0], tensor)
        if tensor.datatype not in _NUMERIC:
            raise _bad(
                f"{tensor.where}: takes a numeric datatype (FP*, INT*, UINT*), "
                f"not {tensor.datatype}"
            )
        assert isinstance(tensor.values, np.ndarray)
        rows = tensor.values.astype(np.float64, copy=False).reshape(shape)
        self._check_values(rows, self._matrix_block, tensor)
        return rows

    def _check_values(self, values: FloatArray, block: _Block, tensor: Tensor | None) -> None:
        """Vectorised checks of a block of columns: finite (NaN only where nullable), whole
        numbers for integer features, 0/1 for boolean ones. ``tensor``: where the values
        are, for messages."""
        finite = np.isfinite(values)
        if not finite.all():
            where = "" if tensor is None else tensor.where
            bad = ~(finite | (np.isnan(values) & block.nullable))
            if bad.any():
                row, col = np.argwhere(bad)[0]
                name = block.names[col]
                raise _bad(
                    f"{where}: row {row}, {name}: {values[row, col]} is not a finite number"
                    + ("" if block.nullable[col] else " (NaN only for nullable features)")
                )
        for positions, test, what in (
            (block.integer, _not_whole, "a whole number within ±2**53"),
            (block.boolean, _not_boolean, "0 or 1"),
        ):
            if not positions:
                continue
            sub = values[:, positions]
            bad = test(sub) & ~np.isnan(sub)
            if bad.any():
                row, col = np.argwhere(bad)[0]
                name = block.names[positions[col]]
                where = "" if tensor is None else tensor.where
                raise _bad(f"{where}: row {row}, {name}: {sub[row, col]} is not {what}")

    # -- outputs -------------------------------------------------------------------------------

    def wanted(self, requested: list[RequestedOutput] | None) -> list[RequestedOutput]:
        """The outputs to return (every one when none is asked for)."""
        if requested is None:
            return [RequestedOutput(name, None) for name in self.outputs]
        for i, output in enumerate(requested):
            # Whether this version can explain is the predictor's to say (with the reason).
            if output.name not in self.outputs and output.name not in EXPLANATIONS:
                raise _bad(
                    f"outputs[{i}]: unknown output {output.name!r}; this model has "
                    f"{', '.join([*self.outputs, *EXPLANATIONS])}"
                )
        return requested

    @staticmethod
    def explain_at(wanted: list[RequestedOutput]) -> tuple[str | int, ...] | None:
        """Where in the request explanations were asked for, or None."""
        for i, output in enumerate(wanted):
            if output.name in EXPLANATIONS:
                return ("outputs", i, "name")
        return None

    def output_tensors(
        self,
        prediction: Prediction,
        wanted: list[RequestedOutput],
        binary_default: bool,
        answered: Manifest | None = None,
    ) -> list[OutputTensor]:
        """The outputs asked for; ``answered``: the version that made the prediction (what its
        explanations are laid out by), when not this signature's."""
        out: list[OutputTensor] = []
        labels = prediction.predictions
        for output in wanted:
            binary = binary_default if output.binary is None else output.binary
            if output.name == PREDICT:
                out.append(
                    OutputTensor(
                        PREDICT,
                        self.label_datatype,
                        (len(labels),),
                        self._labels(labels),
                        binary,
                        self.label_frames,
                    )
                )
            elif output.name == PREDICT_PROBA:
                proba = prediction.probabilities
                assert proba is not None
                out.append(OutputTensor(PREDICT_PROBA, "FP64", proba.shape, proba, binary))
            else:
                every = output.name == EXPLANATION_ALL
                values = explanation_tensor(answered or self.manifest, prediction, every)
                out.append(OutputTensor(output.name, "FP64", values.shape, values, binary))
        return out

    def _labels(self, labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if self.label_datatype == BYTES:
            # Text classes (the manifest's classes are strictly str): already text.
            return labels
        if self.label_datatype == BOOL:
            return labels.astype(np.bool_, copy=False)
        if self.label_datatype == "INT64":
            return labels.astype(np.int64, copy=False)
        return labels.astype(np.float64, copy=False)


@dataclass(frozen=True)
class _Block:
    """Some columns of the model's input, and what their values must satisfy."""

    names: list[str]
    nullable: npt.NDArray[np.bool_]
    integer: list[int]
    """Positions (within the block) of integer features."""
    boolean: list[int]
    checked: bool
    """Whether its values need more than being finite."""

    @classmethod
    def of(cls, features: list[Feature], columns: list[int]) -> _Block:
        chosen = [features[i] for i in columns]
        integer = [p for p, f in enumerate(chosen) if f.kind == FeatureKind.INTEGER]
        boolean = [p for p, f in enumerate(chosen) if f.kind == FeatureKind.BOOLEAN]
        return cls(
            names=[f.name for f in chosen],
            nullable=np.array([f.nullable for f in chosen], dtype=bool),
            integer=integer,
            boolean=boolean,
            checked=bool(integer or boolean or any(f.nullable for f in chosen)),
        )


def _not_whole(values: FloatArray) -> npt.NDArray[np.bool_]:
    with np.errstate(invalid="ignore"):
        out: npt.NDArray[np.bool_] = (values != np.floor(values)) | (
            np.abs(values) > _MAX_EXACT_INT
        )
    return out


def _not_boolean(values: FloatArray) -> npt.NDArray[np.bool_]:
    out: npt.NDArray[np.bool_] = (values != 0) & (values != 1)
    return out

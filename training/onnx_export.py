"""Compile a fitted pipeline to ONNX and prove it answers like the pipeline before it may serve.

Conversion uses float64 graphs (so float32 rounding cannot flip a label) with zipmap off. Parity
runs the converted graph through :class:`serving.execution.onnx_runtime.OnnxModel` (the class
that serves) on the holdout plus generated rows: random rows within the training ranges and
categories, and
rows interpolated between holdout rows of different predicted classes, which land near decision
boundaries. Labels must agree on every row; probabilities / regression values within TOLERANCE.
A model that cannot be converted, or fails parity, is still served by scikit-learn: the
manifest says why.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.execution.onnx_runtime import OnnxIO, OnnxModel, OnnxUnavailableError
from serving.store import (
    ONNX_FILE,
    Feature,
    FeatureKind,
    OnnxExport,
    OnnxGraphs,
    OnnxParity,
    Task,
    write_onnx_graphs,
)
from training.onnx_layout import transpose_linear_chains
from training.onnx_trees import use_exact_thresholds

PROBA_TOLERANCE = 1e-6
"""Max abs difference allowed for probabilities (float32 tree outputs are ~1e-7 off)."""
REGRESSION_RTOL = 1e-9
"""Regression values: max abs difference allowed, relative to the largest |prediction|."""
MAX_REASON_CHARS = 100_000
"""Per exception in the chain, the failure text kept in the manifest (a node dump runs to some
40 000 characters; beyond this it can only be more array contents)."""
SUMMARY_PART_CHARS = 160
_RANDOM_ROWS = 1000
_BOUNDARY_PAIRS = 60
_BOUNDARY_STEPS = 16


def failure_text(exc: BaseException) -> str:
    """The whole story of an exception: its type and message, then each cause's, as
    ``Caused by: Type: message`` lines (skl2onnx wraps the real reason, e.g. a protobuf type
    error, in a message that prints every attribute of the node it could not build)."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        part = f"{type(current).__name__}: {current}".strip()
        if len(part) > MAX_REASON_CHARS:
            part = (
                part[:MAX_REASON_CHARS] + f" ... ({len(part) - MAX_REASON_CHARS} more characters)"
            )
        parts.append(part)
        current = current.__cause__ or current.__context__
    return "\nCaused by: ".join(parts)


_NO_CONVERTER = re.compile(
    r"Unable to find a (?:shape calculator|converter) for .*?'<class '([\w.]+)'>'"
)
_DUMP = re.compile(r"\s*(?:with name=\S+ )?and attributes=.*|\s*attributes=.*|[\[{(]\s*$")


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = _DUMP.sub("", line).strip()
    if len(line) > SUMMARY_PART_CHARS:
        line = line[: SUMMARY_PART_CHARS - 1] + "…"
    return line


def summarize(reason: str) -> str:
    """One readable line from a failure text (see :func:`failure_text`): the first line of the
    error without the node dump it may carry, and the first line of its innermost cause."""
    head, *causes = reason.split("\nCaused by: ")
    missing = _NO_CONVERTER.search(head)
    if missing:
        return f"skl2onnx has no converter for {missing.group(1).rsplit('.', 1)[-1]}"
    line = _first_line(head)
    if causes:
        cause = _first_line(causes[-1])
        if cause and cause not in line:
            line = f"{line} (caused by {cause})"
    return line


def summary(onnx: OnnxExport) -> str:
    """One line saying why a version has no ONNX graph (the status, if no reason was kept)."""
    return summarize(onnx.reason) if onnx.reason else onnx.status


def converter_version() -> str | None:
    try:
        import skl2onnx
    except ImportError:
        return None
    return str(skl2onnx.__version__)


def _initial_types(signature: OnnxIO) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    if signature.input_format == "ndarray":
        return [("X", DoubleTensorType([None, len(signature.features)]))]
    return [
        (
            f.name,
            StringTensorType([None, 1])
            if f.kind == FeatureKind.CATEGORICAL
            else DoubleTensorType([None, 1]),
        )
        for f in signature.features
    ]


def convert(model: Any, signature: OnnxIO) -> bytes:
    from skl2onnx import convert_sklearn

    final = model[-1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if signature.task == Task.CLASSIFICATION else None
    onx = convert_sklearn(model, initial_types=_initial_types(signature), options=options)
    use_exact_thresholds(onx, final)
    transpose_linear_chains(onx)
    return bytes(onx.SerializeToString())


def generated_rows(features: list[Feature], n: int, seed: int) -> pd.DataFrame:
    """Random rows within the training ranges and categories (missing values where nullable)."""
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {}
    for f in features:
        if f.kind == FeatureKind.CATEGORICAL:
            values: Any = rng.choice(np.array(f.categories or [""], dtype=object), n)
        else:
            lo, hi = f.min or 0.0, f.max or 0.0
            values = rng.uniform(lo, hi, n)
            if f.kind in (FeatureKind.INTEGER, FeatureKind.BOOLEAN):
                values = np.round(values)
        if f.nullable:
            values = np.asarray(
                values, dtype=object if f.kind == FeatureKind.CATEGORICAL else float
            )
            mask = rng.random(n) < 0.05
            values[mask] = None if f.kind == FeatureKind.CATEGORICAL else np.nan
        data[f.name] = values
    return pd.DataFrame(data, columns=[f.name for f in features])


def boundary_rows(model: Any, X: pd.DataFrame, features: list[Feature], seed: int) -> pd.DataFrame:
    """Rows on segments between holdout rows with different predicted labels."""
    rng = np.random.default_rng(seed + 1)
    labels = np.asarray(model.predict(_as_input(X, features)))
    pairs = [
        (i, j)
        for i, j in rng.integers(0, len(X), size=(_BOUNDARY_PAIRS * 8, 2))
        if labels[i] != labels[j]
    ][:_BOUNDARY_PAIRS]
    if not pairs:
        return X.iloc[:0]
    steps = np.linspace(0.0, 1.0, _BOUNDARY_STEPS)
    rows = []
    for i, j in pairs:
        a, b = X.iloc[i], X.iloc[j]
        for t in steps:
            row = {}
            for f in features:
                if f.kind == FeatureKind.CATEGORICAL:
                    row[f.name] = a[f.name] if t < 0.5 else b[f.name]
                else:
                    row[f.name] = (1 - t) * a[f.name] + t * b[f.name]
            rows.append(row)
    return pd.DataFrame(rows, columns=[f.name for f in features])


def _as_input(X: pd.DataFrame, features: list[Feature]) -> Any:
    if any(f.kind == FeatureKind.CATEGORICAL for f in features):
        return X
    return X.to_numpy(dtype=np.float64)


def check_parity(
    model: Any, onnx_model: Any, X_check: pd.DataFrame, signature: OnnxIO
) -> OnnxParity:
    from serving.execution.onnx_runtime import onnxruntime_version

    X = _as_input(X_check, signature.features)
    expected = np.asarray(model.predict(X))
    got, proba = onnx_model.predict_both(X)
    if signature.task == Task.CLASSIFICATION:
        agreement = float(np.mean(expected == got))
        max_diff = float(np.max(np.abs(np.asarray(model.predict_proba(X)) - proba)))
        tolerance = PROBA_TOLERANCE
    else:
        agreement = 1.0
        max_diff = float(np.max(np.abs(expected.astype(float) - got)))
        tolerance = REGRESSION_RTOL * max(1.0, float(np.max(np.abs(expected))))
    return OnnxParity(
        passed=agreement == 1.0 and max_diff <= tolerance,
        rows_checked=len(X_check),
        label_agreement=agreement,
        max_abs_diff=max_diff,
        tolerance=tolerance,
        converter=f"skl2onnx {converter_version()}",
        runtime=f"onnxruntime {onnxruntime_version()}",
    )


def _argmax_decides(model: Any) -> bool:
    """True for classifiers whose predict is ``classes_[argmax(predict_proba)]`` by definition
    (trees and forests); their ties are frequent (votes), so labels must break them the same
    way."""
    from sklearn.ensemble import BaggingClassifier, ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    final = model[-1] if hasattr(model, "steps") else model
    deciders = (
        RandomForestClassifier,
        ExtraTreesClassifier,
        DecisionTreeClassifier,
        ExtraTreeClassifier,
        BaggingClassifier,
    )
    return isinstance(final, deciders)


def export(
    model: Any, signature: OnnxIO, X_holdout: pd.DataFrame, out_dir: Path, seed: int
) -> OnnxExport:
    """Write ``model.onnx`` into ``out_dir`` if it converts and passes parity; say why not."""
    argmax = signature.task == Task.CLASSIFICATION and _argmax_decides(model)
    signature = replace(signature, labels_from_probabilities=argmax)

    if converter_version() is None:
        return OnnxExport(status="unavailable", reason="skl2onnx is not installed")
    start = time.perf_counter()
    compiled = _compile(model, signature)
    if isinstance(compiled, OnnxExport):
        return compiled
    onnx_bytes, onnx_model = compiled
    X_check = _rows_to_check(model, X_holdout, signature, seed)
    try:
        parity = check_parity(model, onnx_model, X_check, signature)
    except Exception as exc:  # e.g. the graph rejects an input the pipeline accepts
        return OnnxExport(status="parity_failed", reason=f"parity run failed: {failure_text(exc)}")
    seconds = time.perf_counter() - start
    if not parity.passed:
        return OnnxExport(
            status="parity_failed",
            reason=(
                f"label agreement {parity.label_agreement:.6f}, max abs diff "
                f"{parity.max_abs_diff:.3g} (tolerance {parity.tolerance:.3g}) on "
                f"{parity.rows_checked} rows"
            ),
            parity=parity,
            labels_from_probabilities=argmax,
        )
    (out_dir / ONNX_FILE).write_bytes(onnx_bytes)
    # The graphs the parity check ran are the ones the service will run, as they are.
    prepared = onnx_model.graphs
    graphs = OnnxGraphs(
        files=write_onnx_graphs(out_dir, onnx_bytes, prepared.graphs),
        inputs=prepared.inputs,
        outputs=prepared.outputs,
        label_from=prepared.label_from,
    )
    return OnnxExport(
        status="ok",
        file=ONNX_FILE,
        parity=parity,
        seconds=round(seconds, 3),
        labels_from_probabilities=argmax,
        graphs=graphs,
    )


def _compile(model: Any, signature: OnnxIO) -> tuple[bytes, OnnxModel] | OnnxExport:
    """The ONNX graph and the serving class loaded with it, or why not (an OnnxExport)."""
    try:
        onnx_bytes = convert(model, signature)
    except Exception as exc:  # the converter raises many types for unsupported models
        return OnnxExport(
            status="conversion_failed",
            reason=failure_text(exc),
        )
    try:
        return onnx_bytes, OnnxModel(signature, onnx_bytes)
    except OnnxUnavailableError as exc:
        return OnnxExport(status="unavailable", reason=str(exc))
    except Exception as exc:  # a graph onnxruntime cannot load is a conversion failure
        return OnnxExport(status="conversion_failed", reason=f"onnxruntime: {failure_text(exc)}")


def _rows_to_check(
    model: Any, X_holdout: pd.DataFrame, signature: OnnxIO, seed: int
) -> pd.DataFrame:
    """The holdout, random rows and (for a classifier) rows near decision boundaries."""
    return pd.concat(
        [
            X_holdout,
            generated_rows(signature.features, _RANDOM_ROWS, seed),
            boundary_rows(model, X_holdout, signature.features, seed)
            if signature.task == Task.CLASSIFICATION
            else X_holdout.iloc[:0],
        ],
        ignore_index=True,
    )

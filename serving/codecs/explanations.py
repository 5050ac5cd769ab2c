"""Feature contributions as the APIs give them: for the predicted class (or the value of a
regressor), or for every class.

The worker computes every output's contributions (serving.execution.runtime.Contributions);
here the ones asked for are picked and laid out: as JSON objects keyed by feature name for the
typed API, as one FP64 tensor for the Open Inference Protocol.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from serving.execution.runtime import Contributions, Prediction
from serving.store import Manifest

FloatArray = npt.NDArray[np.float64]


def contributions_of(prediction: Prediction) -> Contributions:
    explained = prediction.contributions
    if explained is None:  # the explain batcher always asks for them
        raise RuntimeError("the prediction carries no contributions")
    return explained


def predicted_outputs(manifest: Manifest, prediction: Prediction) -> npt.NDArray[np.intp]:
    """Each row's output to explain: its predicted class's position (0 for a regressor)."""
    classes = manifest.target.classes
    labels = prediction.predictions
    if not classes:
        return np.zeros(len(labels), dtype=np.intp)
    position = {label: i for i, label in enumerate(classes)}
    return np.fromiter((position[label] for label in labels.tolist()), np.intp, len(labels))


def json_rows(manifest: Manifest, prediction: Prediction, every_class: bool) -> list[Any]:
    """One object per row: ``{"space", "outputs": [{"class", "base", "contributions"}]}``,
    ``contributions`` mapping every input feature to its part; ``class`` only for
    classifiers; one output per class with ``every_class``, else the predicted class's."""
    explained = contributions_of(prediction)
    explain = manifest.explain
    space = explain.space if explain is not None else None
    names = manifest.feature_names
    classes = manifest.target.classes
    base = explained.base.tolist()
    values = explained.values
    n_outputs = values.shape[2]
    chosen = None if every_class else predicted_outputs(manifest, prediction).tolist()
    rows: list[Any] = []
    for i, row in enumerate(values.tolist()):
        outputs = range(n_outputs) if chosen is None else (chosen[i],)
        described = []
        for k in outputs:
            output: dict[str, Any] = {}
            if classes:
                output["class"] = classes[k]
            output["base"] = base[k]
            output["contributions"] = {name: row[f][k] for f, name in enumerate(names)}
            described.append(output)
        rows.append({"space": space, "outputs": described})
    return rows


def tensor(manifest: Manifest, prediction: Prediction, every_class: bool) -> FloatArray:
    """``[rows, 1 + features]`` (the base, then each feature's contribution, in feature order)
    for the predicted output, or ``[rows, outputs, 1 + features]`` with ``every_class``."""
    explained = contributions_of(prediction)
    values = explained.values  # (rows, features, outputs)
    n_rows, _, n_outputs = values.shape
    full = np.empty((n_rows, n_outputs, values.shape[1] + 1))
    full[:, :, 0] = explained.base
    full[:, :, 1:] = values.transpose(0, 2, 1)
    if every_class:
        return full
    return full[np.arange(n_rows), predicted_outputs(manifest, prediction)]

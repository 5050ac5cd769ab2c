"""Large numeric ``rows`` requests parsed and predicted in parts, the two overlapping.

Parsing a large body is event-loop work as long as predicting it is worker work: for a
10 000-row request of 30 features each takes about 40 ms. Done one after the other, a request
costs their sum while one core idles at a time. Here the body is cut between rows into parts of
about ``PART_BYTES``; each part is parsed and handed to the model's batcher at once, and the
loop yields before parsing the next, so the pool predicts part k while the loop parses part
k + 1. The request then costs about the longer of the two, plus one part.

Only models served by ONNX Runtime are cut: a call costs it microseconds, whatever the rows,
while scikit-learn pays a fixed cost per call (validation, and for a forest a job per tree:
10-18 ms for the 100-tree forest), which eight parts would pay eight times; measured, the
forest under scikit-learn took three to four times the worker CPU when cut in parts.

Only bodies the bulk lane would take are cut, and only when every part proves to be rows of
numbers and the rest of the body a plain ``{"rows": ..., "return_probabilities": ...}``
object (``serving.bulk_rows``): then the parts together are exactly the rows the whole body
holds. Anything else returns None before any answer is used, and the caller runs the body
through the ordinary path (which also says what is wrong). The answer is the same as the whole
request's: predictions and probabilities in row order, the out-of-range warnings of all rows.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np

from serving.admission import admit, current_deadline, deadline_in, within
from serving.bulk_rows import parse_envelope, parse_row_part, split_numeric_rows
from serving.runtime import FloatArray, Prediction
from serving.store import Task

if TYPE_CHECKING:
    from serving.dataplane import DataPlane, ServedModel

MIN_BODY_BYTES = 512 * 1024
"""Smaller bodies are parsed whole: there is too little to overlap."""
PART_BYTES = 256 * 1024
"""About this much of the body per part (a 10 000 x 30 body of 2.2 MB: 8 parts)."""
MAX_PARTS = 16


async def predict_in_parts(plane: DataPlane, served: ServedModel, body: bytes) -> bytes | None:
    """The response body of a large numeric ``rows`` request, or None when the body is not
    one this module cuts (see the module docstring)."""
    from serving.dataplane import PredictionResult, _refuse_non_finite

    if len(body) < MIN_BODY_BYTES or not served.all_numeric or served.batcher is None:
        return None
    if served.runtime != "onnx":
        return None  # scikit-learn's fixed cost per call (10-18 ms for a forest) per part
    split = split_numeric_rows(body, min(MAX_PARTS, len(body) // PART_BYTES))
    if split is None:
        return None
    envelope, parts = split
    want = parse_envelope(envelope)
    if want is None or (want and served.manifest.task != Task.CLASSIFICATION):
        return None
    settings = plane.settings
    width = len(served.manifest.features)
    deadline = current_deadline.get() or deadline_in(settings.request_timeout_s)
    batcher = served.batcher
    chunks: list[FloatArray] = []
    submitted: list[asyncio.Future[Prediction]] = []
    pending: list[asyncio.Future[Prediction]] = []
    try:
        for part in parts:
            rows = parse_row_part(part, width)
            if rows is None or sum(map(len, chunks)) + len(rows) > settings.max_request_rows:
                return None  # the finally below withdraws what was sent
            admit(batcher, len(rows), settings.max_queue_rows, settings.retry_after_s)
            chunks.append(rows)
            submitted.append(batcher.submit(rows, want))
            pending.append(asyncio.ensure_future(within(submitted[-1], deadline)))
            await asyncio.sleep(0)  # let the loop hand a finished part's successor to the pool
        predictions = await asyncio.gather(*pending)
    finally:
        for future in (*pending, *submitted):
            future.cancel()  # no-op once done; withdraws rows not yet sent otherwise
    observer = plane.input_observer
    warnings = observer(served, np.concatenate(chunks)) if observer is not None else ()
    probabilities = [p.probabilities for p in predictions]
    prediction = Prediction(
        np.concatenate([p.predictions for p in predictions]),
        None if any(p is None for p in probabilities) else np.concatenate(probabilities),  # type: ignore[arg-type]
    )
    _refuse_non_finite(prediction)
    result = PredictionResult(
        served.key[0], served.key[1], prediction, served.class_keys, want, warnings
    )
    return result.to_json()

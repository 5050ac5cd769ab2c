"""The lines of a bulk-scoring output file: ``row,prediction[,probability_<class>...]`` per
input row, written as CSV bytes a chunk at a time (see training/csv_text.py)."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.execution.runtime import LoadedModel
from serving.store import Task
from training import csv_text


def cell(value: Any) -> bytes:
    """One CSV field, quoted where the text needs it (a label with a comma, say)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([value])
    return buffer.getvalue().encode("utf-8")


def _float_cells(values: npt.NDArray[np.float64]) -> list[bytes]:
    """repr: the shortest text that reads back as the same float64; missing is empty."""
    return [b"" if v != v else repr(v).encode("ascii") for v in values.tolist()]


PROBABILITY_DECIMALS = 9
"""Probabilities are written as 0.ddddddddd: far below any probability's own error, and
fixed-width text numpy can write digit by digit (see training/csv_text.py)."""


class ScoreWriter:
    """Formats the predictions of one chunk as CSV bytes, one line per input row:
    ``row,prediction[,probability_<class>...]``; refused rows keep their number, the other
    fields empty."""

    def __init__(self, model: LoadedModel, probabilities: bool) -> None:
        self.model = model
        self.classification = model.manifest.task == Task.CLASSIFICATION
        self.probabilities = probabilities and self.classification
        classes = model.manifest.target.classes or []
        self.header = ["row", "prediction"]
        if self.probabilities:
            self.header += [f"probability_{c}" for c in classes]
        labels = model.labels if model.labels is not None else np.asarray(classes, dtype=object)
        self.label_text = [cell(v) for v in labels.tolist()]

    def _label_codes(
        self, values: npt.NDArray[Any], indexed: bool
    ) -> tuple[npt.NDArray[np.int64], list[bytes]]:
        """Each row's position in a table of label texts, and the table."""
        if indexed:
            return np.asarray(values, dtype=np.int64), self.label_text
        unique, inverse = np.unique(values, return_inverse=True)
        return inverse.astype(np.int64), [cell(v) for v in unique.tolist()]

    def text(
        self, first_row: int, rows: npt.NDArray[np.float64], refused: npt.NDArray[np.bool_]
    ) -> bytes:
        """Predict the rows not refused; return the chunk's output lines, each starting with its
        input row number (``first_row`` for the first)."""
        n = len(refused)
        good = ~refused
        width = len(self.header) - 2
        numbers = np.arange(first_row, first_row + n, dtype=np.int64)
        prediction: csv_text.Segment
        codes = np.zeros(n, dtype=np.int64)  # 0: the empty text of a refused row
        table: list[bytes] = [b""]
        probabilities = np.zeros((n, width))
        predicted = np.full(n, np.nan)
        if good.any():  # a runtime may refuse an empty batch
            values, proba, indexed = self.model.predict_coded(rows[good], self.probabilities)
            if self.classification:
                label_codes, labels = self._label_codes(values, indexed)
                codes[good] = label_codes + 1
                table += labels
            else:
                predicted[good] = values
            if proba is not None:
                probabilities[good] = proba
        if self.classification:
            prediction = csv_text.Table(codes, table)
        else:
            prediction = csv_text.Ragged(_float_cells(predicted))
        segments: list[csv_text.Segment] = [
            csv_text.Integers(numbers),
            csv_text.Constant(b",", n),
            prediction,
        ]
        if self.probabilities:
            text = csv_text.fixed_decimals(probabilities, PROBABILITY_DECIMALS)
            segments += [
                csv_text.Block(text, good),
                csv_text.Table(refused.astype(np.int64), [b"", b"," * width]),
            ]
        segments.append(csv_text.Constant(b"\n", n))
        return csv_text.assemble(n, segments)

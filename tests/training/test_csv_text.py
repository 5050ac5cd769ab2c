"""CSV lines assembled with numpy read back as the values they were built from."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from training import csv_text


def test_segments_assemble_into_csv_lines_across_digit_boundaries() -> None:
    numbers = np.arange(95, 1005, dtype=np.int64)  # 2, 3 and 4 digits
    n = len(numbers)
    codes = np.arange(n, dtype=np.int64) % 3
    probabilities = np.random.default_rng(0).random((n, 2))
    probabilities[0] = [1.0, 0.0]
    present = codes != 0  # code 0: a refused row, no probabilities
    text = csv_text.fixed_decimals(probabilities, 9)

    body = csv_text.assemble(
        n,
        [
            csv_text.Integers(numbers),
            csv_text.Constant(b",", n),
            csv_text.Table(codes, [b"", b"yes", b'"a, b"']),
            csv_text.Block(text, present),
            csv_text.Table((~present).astype(np.int64), [b"", b",,"]),
            csv_text.Constant(b",", n),
            csv_text.Ragged([repr(float(v)).encode() for v in numbers]),
            csv_text.Constant(b"\n", n),
        ],
    )

    frame = pd.read_csv(
        io.BytesIO(b"row,label,p0,p1,x\n" + body), keep_default_na=False, dtype={"label": str}
    )
    assert frame["row"].tolist() == numbers.tolist()
    assert frame["label"].tolist() == [["", "yes", "a, b"][c] for c in codes]
    got = frame.loc[present, ["p0", "p1"]].to_numpy(dtype=float)
    np.testing.assert_allclose(got, probabilities[present], atol=5e-10)
    assert (frame.loc[~present, ["p0", "p1"]] == "").all().all()
    assert frame["x"].tolist() == numbers.astype(float).tolist()


def test_probabilities_of_one_and_zero_are_written_exactly() -> None:
    text = csv_text.fixed_decimals(np.array([[1.0, 0.0, 0.5]]), 3)
    assert text.tobytes() == b",1.000,0.000,0.500"


def test_no_rows_is_no_bytes() -> None:
    assert csv_text.assemble(0, [csv_text.Constant(b"\n", 0)]) == b""

"""The bulk lane for numeric ``rows`` bodies accepts only what the schema accepts, with the
same values, and steps aside (None) for everything else."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from serving.codecs.bulk_rows import MIN_BODY_BYTES, parse_numeric_rows
from serving.codecs.schemas import build_request_model
from serving.core.dataplane import RowEncoder
from serving.store import ModelStore

WIDTH = 4  # iris
N = 400  # rows: enough for bodies over MIN_BODY_BYTES


def _rows() -> list[list[object]]:
    values = np.random.default_rng(0).uniform(-10, 10, size=(N, WIDTH)).round(6)
    rows: list[list[object]] = values.tolist()
    rows[1] = [1, -2, 0, 3]  # JSON integers are floats to the schema as well
    rows[2] = [1e-300, -1.5e20, 0.0, -0.0]
    return rows


def _body(rows: object, **extra: object) -> bytes:
    text = rows if isinstance(rows, str) else json.dumps(rows)
    parts = [f'"rows": {text}', *(f'"{k}": {json.dumps(v)}' for k, v in extra.items())]
    body = ("{" + ", ".join(parts) + "}").encode()
    assert len(body) >= MIN_BODY_BYTES
    return body


def _schema(store: ModelStore, body: bytes) -> tuple[np.ndarray, bool] | None:
    manifest = store.manifest("iris", 1)
    try:
        request = build_request_model(manifest, 10_000).model_validate_json(body)
    except ValidationError:
        return None
    return RowEncoder(manifest).rows(request.rows), request.return_probabilities  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "body",
    [
        _body(_rows()),
        _body(_rows(), return_probabilities=True),
        _body(_rows(), return_probabilities=False),
        json.dumps({"return_probabilities": True, "rows": _rows()}, indent=2).encode(),
        _body(json.dumps(_rows()).replace("1e-300", "1E-300").replace(", ", " ,\n\t")),
        _body(_rows()).replace(b'"rows"', b'"r\\u006fws"'),
        _body(json.dumps(_rows()).replace("[1, -2, 0, 3]", "[1, -2, 0, 18446744073709551615]")),
    ],
    ids=[
        "plain",
        "proba",
        "no-proba",
        "keys-reordered-indented",
        "exponent-whitespace",
        "escaped-key",
        "largest-unsigned-int",
    ],
)
def test_accepted_bodies_parse_as_the_schema_parses_them(
    trained_store: ModelStore, body: bytes
) -> None:
    bulk = parse_numeric_rows(body, WIDTH, 10_000)
    assert bulk is not None
    expected = _schema(trained_store, body)
    assert expected is not None
    np.testing.assert_array_equal(bulk[0], expected[0])
    assert bulk[0].dtype == np.float64
    assert bulk[1] == expected[1]


def _with(value: str, row: int = 7, column: int = 2) -> bytes:
    rows = _rows()
    rows[row][column] = "@"
    return _body(json.dumps(rows).replace('"@"', value))


REFUSED = {
    "string": _with('"1.5"'),
    "true": _with("true"),
    "false": _with("false"),
    "null": _with("null"),
    "nested-list": _with("[1.0]"),
    "empty-list": _with("[]"),
    "object": _with('{"a": 1}'),
    "huge": _with("1e400"),
    "big-int": _with("123456789012345678901234567890"),
    "nested-deeper": _body(json.dumps(_rows()).replace("[1, -2, 0, 3]", "[1, -2, [0], 3]")),
    "nan": _with("NaN"),
    "ragged": _body(json.dumps(_rows()).replace("[1, -2, 0, 3]", "[1, -2, 0]")),
    "row-not-a-list": _body(json.dumps(_rows()).replace("[1, -2, 0, 3]", '"1, -2, 0, 3"')),
    "row-a-string-of-width": _body(json.dumps(_rows()).replace("[1, -2, 0, 3]", '"abcd"')),
    "row-an-object-of-width": _body(
        json.dumps(_rows()).replace("[1, -2, 0, 3]", '{"a": 1, "b": 2, "c": 3, "d": 4}')
    ),
    "row-a-number": _body(json.dumps(_rows()).replace("[1, -2, 0, 3]", "4")),
    "ragged-same-total": _body(
        json.dumps(_rows()).replace("[1, -2, 0, 3]", "[1, -2, 0]").replace("-0.0]", "-0.0, 7]")
    ),
    "proba-as-string": _body(_rows(), return_probabilities="true"),
    "proba-as-number": _body(_rows(), return_probabilities=1),
    "extra-key": _body(_rows(), threshold=0.5),
    "instances-too": _body(_rows(), instances=[]),
    "duplicate-rows-key": _body(_rows())[:-1] + b', "rows": [[1, 2, 3, 4]]}',
    "truncated": _body(_rows())[:-20],
    "not-an-object": json.dumps(_rows()).encode(),
}


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_anything_else_is_left_to_the_schema(body: bytes) -> None:
    assert len(body) >= MIN_BODY_BYTES
    assert parse_numeric_rows(body, WIDTH, 10_000) is None


def test_rows_outlive_the_next_parse() -> None:
    # One parser per thread is reused; what it gave before must not change.
    first, other = _rows(), (-np.asarray(_rows(), dtype=np.float64)).tolist()
    before = parse_numeric_rows(_body(first), WIDTH, 10_000)
    assert parse_numeric_rows(_body(other), WIDTH, 10_000) is not None
    assert parse_numeric_rows(b"{" + _body(other), WIDTH, 10_000) is None  # refused midway
    assert before is not None
    np.testing.assert_array_equal(before[0], np.asarray(first, dtype=np.float64))


def test_limits_and_small_bodies_are_left_to_the_schema() -> None:
    body = _body(_rows())
    assert parse_numeric_rows(body, WIDTH + 1, 10_000) is None  # wrong width for the model
    assert parse_numeric_rows(body, WIDTH, N - 1) is None  # more rows than allowed
    assert parse_numeric_rows(body, WIDTH, N) is not None
    assert parse_numeric_rows(b'{"rows": [[1, 2, 3, 4]]}', WIDTH, 10_000) is None


def test_a_bad_value_deep_in_a_bulk_request_is_reported_where_it_is(client: httpx.Client) -> None:
    for literal in ("true", "null", '"5.1"'):
        response = client.post("/models/iris/predict", content=_with(literal, row=321, column=3))
        assert response.status_code == 422, literal
        details = response.json()["error"]["details"]
        assert details[0]["loc"] == ["rows", 321, 3], literal


def test_a_bulk_request_predicts_like_the_model(
    client: httpx.Client, trained_store: ModelStore
) -> None:
    rows = np.random.default_rng(3).uniform(-5, 50, size=(2000, 30))
    _, model = trained_store.load_model("breast_cancer", 1)
    body = _body(rows.tolist(), return_probabilities=True)
    response = client.post("/models/breast_cancer/predict", content=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["predictions"] == model.predict(rows).tolist()
    classes = model.classes_.tolist()  # text labels: the keys as they are
    got = np.array([[p[c] for c in classes] for p in answer["probabilities"]])
    np.testing.assert_allclose(got, model.predict_proba(rows), atol=1e-6)

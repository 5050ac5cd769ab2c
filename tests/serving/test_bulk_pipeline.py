"""Large numeric ``rows`` bodies parsed and predicted in parts answer exactly as when parsed
whole, through the real service and its process pool; anything the parts cannot prove goes
the ordinary way."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest

from serving import bulk_pipeline
from serving.bulk_rows import parse_envelope, parse_row_part, split_numeric_rows
from serving.store import ModelStore
from tests.serving.conftest import quiet_settings, running_server
from tests.serving.test_bulk_rows import REFUSED, WIDTH

ROWS = 3000


@pytest.fixture(scope="module")
def client(trained_store: ModelStore) -> Iterator[httpx.Client]:
    with (
        running_server(quiet_settings(trained_store)) as running,
        httpx.Client(base_url=running.url, timeout=60) as http,
    ):
        yield http


def _rows(width: int, seed: int = 0) -> list[list[float]]:
    rows: list[list[float]] = (
        np.random.default_rng(seed).uniform(0, 40, size=(ROWS, width)).round(5).tolist()
    )
    rows[2000][3] = 1e6  # out of its training range: a warning from deep in the body
    return rows


def _parts(body: bytes, parts: int, width: int) -> list[list[float]] | None:
    """The rows the pipeline would predict, or None where it steps aside."""
    split = split_numeric_rows(body, parts)
    if split is None or parse_envelope(split[0]) is None:
        return None
    out: list[list[float]] = []
    for part in split[1]:
        rows = parse_row_part(part, width)
        if rows is None:
            return None
        out += rows.tolist()
    return out


BODIES = {
    "compact": json.dumps({"rows": _rows(30)}, separators=(",", ":")).encode(),
    "probabilities-first-indented": json.dumps(
        {"return_probabilities": True, "rows": _rows(30)}, indent=2
    ).encode(),
    "probabilities-last": json.dumps({"rows": _rows(30), "return_probabilities": False}).encode(),
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_parts_answer_byte_for_byte_like_the_whole_body(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    assert len(body) >= bulk_pipeline.MIN_BODY_BYTES
    parsed: list[int] = []
    original = parse_row_part

    def counted(part: bytes, width: int) -> object:
        rows = original(part, width)
        parsed.append(0 if rows is None else len(rows))
        return rows

    monkeypatch.setattr(bulk_pipeline, "parse_row_part", counted)
    monkeypatch.setattr(bulk_pipeline, "PART_BYTES", 64 * 1024)
    in_parts = client.post("/models/breast_cancer/predict", content=body)
    assert len(parsed) >= 8
    assert sum(parsed) == ROWS
    monkeypatch.setattr(bulk_pipeline, "MIN_BODY_BYTES", 1 << 40)  # the whole body at once
    whole = client.post("/models/breast_cancer/predict", content=body)
    assert len(parsed) >= 8  # not called again
    assert in_parts.status_code == 200, in_parts.text
    assert in_parts.content == whole.content
    answer = in_parts.json()
    assert len(answer["predictions"]) == ROWS
    assert answer["warnings"]


def test_a_bad_value_in_a_late_part_is_reported_as_the_schema_reports_it(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_pipeline, "PART_BYTES", 64 * 1024)
    for literal in ("null", "true", '"3.5"', "[1]"):
        rows: list[list[object]] = [list(r) for r in _rows(30)]
        rows[2900][7] = "@"
        body = json.dumps({"rows": rows}).replace('"@"', literal).encode()
        response = client.post("/models/breast_cancer/predict", content=body)
        assert response.status_code == 422, literal
        assert response.json()["error"]["details"][0]["loc"] == ["rows", 2900, 7], literal


def test_a_regressor_asked_for_probabilities_gets_the_usual_refusal(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_pipeline, "MIN_BODY_BYTES", 64 * 1024)
    body = json.dumps({"rows": _rows(10), "return_probabilities": True}).encode()
    assert len(body) >= bulk_pipeline.MIN_BODY_BYTES
    response = client.post("/models/diabetes/predict", content=body)
    assert response.status_code == 422
    assert "regressor" in response.text


def test_parts_hold_exactly_the_rows_of_the_body() -> None:
    rows = _rows(WIDTH)
    for body in (
        json.dumps({"rows": rows}).encode(),
        json.dumps({"return_probabilities": True, "rows": rows}, indent=3).encode(),
    ):
        for parts in (1, 2, 7, 50):
            assert _parts(body, parts, WIDTH) == orjson.loads(body)["rows"]


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_what_the_bulk_lane_refuses_the_parts_refuse(body: bytes) -> None:
    for parts in (1, 3):
        assert _parts(body, parts, WIDTH) is None


def test_a_rows_array_that_ends_early_is_refused() -> None:
    rows = json.dumps(_rows(WIDTH)[:50])
    body = ('{"rows": ' + rows + ', "rows": [[1, 2, 3, 4]]}').encode()  # duplicate key
    assert _parts(body, 2, WIDTH) is None
    nested = ('{"rows": [' + rows + "]}").encode()  # one row that is a list of rows
    assert _parts(nested, 2, WIDTH) is None


def test_models_served_by_scikit_learn_are_not_cut(
    trained_store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scikit-learn pays a fixed cost per call: a part per call would cost more than it saves."""
    cut: list[bytes] = []
    monkeypatch.setattr(bulk_pipeline, "split_numeric_rows", lambda b, n: cut.append(b))
    body = BODIES["compact"]
    settings = quiet_settings(trained_store, runtime="sklearn")
    with running_server(settings) as running, httpx.Client(base_url=running.url) as http:
        response = http.post("/models/breast_cancer/predict", content=body, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == ROWS
    assert cut == []

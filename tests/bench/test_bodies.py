"""Request bodies in every form from the same rows, the records file, and reading answers."""

import json
import struct
from pathlib import Path

import numpy as np

from bench import bodies, grpc_load, wrk
from serving.grpc.generated import inference_pb2 as pb
from serving.store import Feature, FeatureKind

NUMERIC = [
    Feature(name="a", kind=FeatureKind.NUMERIC, min=0.0, max=1.0),
    Feature(name="n", kind=FeatureKind.INTEGER, min=1, max=3),
]
MIXED = [*NUMERIC, Feature(name="c", kind=FeatureKind.CATEGORICAL, categories=["x", "yy"])]


def test_rows_are_reproducible_and_within_the_training_range() -> None:
    rows = bodies.sample_rows(MIXED, 50, seed=7)
    assert rows == bodies.sample_rows(MIXED, 50, seed=7)
    assert all(0 <= r[0] <= 1 and r[1] in (1, 2, 3) and r[2] in ("x", "yy") for r in rows)  # type: ignore[operator]


def test_json_forms() -> None:
    rows: list[bodies.Row] = [[0.5, 2], [0.25, 1]]
    typed, header = bodies.encode("typed", NUMERIC, rows)
    assert header == 0
    assert json.loads(typed) == {"instances": [{"a": 0.5, "n": 2}, {"a": 0.25, "n": 1}]}
    explain, _ = bodies.encode("explain", NUMERIC, rows)
    assert json.loads(explain) == {**json.loads(typed), "explain": True}
    assert json.loads(bodies.encode("rows", NUMERIC, rows)[0]) == {"rows": rows}
    v2 = json.loads(bodies.encode("v2json", NUMERIC, rows)[0])
    assert v2["inputs"] == [
        {"name": "input", "shape": [2, 2], "datatype": "FP64", "data": [0.5, 2, 0.25, 1]}
    ]
    assert v2["outputs"] == [{"name": "predict"}]
    peer = json.loads(bodies.encode("mlserver", NUMERIC, rows)[0])
    assert peer["inputs"][0]["name"] == "input-0"
    frame = json.loads(bodies.encode("mlserver", MIXED, [[0.5, 2, "x"]], dataframe=True)[0])
    assert frame["parameters"] == {"content_type": "pd"}
    assert [i["datatype"] for i in frame["inputs"]] == ["FP64", "INT64", "BYTES"]


def test_binary_form_is_what_tritonclient_sends() -> None:
    raw, header_length = bodies.encode("v2binary", MIXED, [[0.5, 2, "yy"]])
    header = json.loads(raw[:header_length])
    assert header["parameters"] == {"binary_data_output": True}
    assert "outputs" not in header
    sizes = [i["parameters"]["binary_data_size"] for i in header["inputs"]]
    data = raw[header_length:]
    assert sizes == [8, 8, 6]
    assert len(data) == sum(sizes)
    assert data[16:] == struct.pack("<I", 2) + b"yy"


def test_records_are_binary_safe(tmp_path: Path) -> None:
    path = bodies.write(tmp_path / "b.rec", [(b'{"x":\n1}', 0), (b"\x00\n\xff", 1)])
    assert path.read_bytes() == b'0 8\n{"x":\n1}1 3\n\x00\n\xff'


def test_predictions_of_each_kind_of_answer() -> None:
    assert bodies.predictions(b'{"predictions": [1, 2]}', None) == [1, 2]
    v2 = {"outputs": [{"name": "predict", "datatype": "INT64", "shape": [2], "data": [0, 1]}]}
    assert bodies.predictions(json.dumps(v2).encode(), None) == [0, 1]
    labels = struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bb"
    proba = np.zeros(4).tobytes()
    head = json.dumps({"outputs": [
        {"name": "predict_proba", "datatype": "FP64", "parameters": {"binary_data_size": 32}},
        {"name": "predict", "datatype": "BYTES", "parameters": {"binary_data_size": len(labels)}},
    ]}).encode()  # fmt: skip
    assert bodies.predictions(head + proba + labels, len(head)) == ["a", "bb"]


def test_same_compares_labels_as_text_and_numbers_within_float32() -> None:
    assert bodies.same([1, "a", 0.1], ["1", "a", 0.1000001])
    assert not bodies.same([0.1], [0.2])
    assert not bodies.same([1], [1, 2])


def test_grpc_form_is_raw_tensors_as_tritonclient_sends_and_its_answers_are_read(
    tmp_path: Path,
) -> None:
    raw, header_length = bodies.encode("grpc", MIXED, [[0.5, 2, "yy"]], model="m")
    assert header_length == 0
    request = pb.ModelInferRequest.FromString(raw)
    assert request.model_name == "m"
    assert [(i.name, i.datatype, list(i.shape)) for i in request.inputs] == [
        ("a", "FP64", [1]), ("n", "INT64", [1]), ("c", "BYTES", [1])
    ]  # fmt: skip
    assert request.raw_input_contents[2] == struct.pack("<I", 2) + b"yy"
    assert [o.name for o in request.outputs] == ["predict"]  # as the typed form answers
    path = bodies.write(tmp_path / "g.rec", [(raw, 0), (b"\n\x00", 0)])
    assert grpc_load.read(path) == [raw, b"\n\x00"]
    answer = pb.ModelInferResponse()
    answer.outputs.add(name="predict_proba", datatype="FP64", shape=[1, 2])
    answer.raw_output_contents.append(np.array([0.25, 0.75]).tobytes())
    answer.outputs.add(name="predict", datatype="BYTES", shape=[1])
    answer.raw_output_contents.append(struct.pack("<I", 2) + b"yy")
    assert bodies.grpc_predictions(answer.SerializeToString()) == ["yy"]


def test_the_grpc_driver_reports_as_wrk_does() -> None:
    part = {"latencies": [100, 300, 200], "duration_s": 2.0}
    errors = {"connect": 0, "read": 1, "write": 0, "status": 2, "timeout": 0}
    line = grpc_load.summary([part | {"errors": errors}, {**part, "errors": errors}])
    result = wrk.parse(line)
    assert (result.requests, result.socket_errors, result.status_errors) == (6, 2, 4)
    assert (result.p50_ms, result.max_ms, result.requests_per_s) == (0.2, 0.3, 3.0)

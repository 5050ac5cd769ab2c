"""The Open Inference Protocol codec: JSON and binary tensors in, responses out, and every
malformed request refused with a message that says where. Binary framing is checked against
tritonclient's own (de)serialisers, so the formats cannot drift apart silently."""

from __future__ import annotations

import struct
import time

import numpy as np
import orjson
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from serving.codecs.oip.binary_bytes import bytes_elements, split_texts
from serving.codecs.oip.tensors import (
    OutputTensor,
    encode_response,
    frame_texts,
    parse_request,
    split_body,
)
from serving.core.errors import InvalidInputError, MalformedRequestError


def _binary_request(
    inputs: list[tuple[str, str, list[int], bytes]], extra: dict[str, object] | None = None
) -> tuple[bytes, str]:
    head = {
        "inputs": [
            {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
            for n, d, s, b in inputs
        ],
        **(extra or {}),
    }
    raw = orjson.dumps(head)
    return raw + b"".join(b for *_, b in inputs), str(len(raw))


def test_json_flat_and_nested_data_decode_alike() -> None:
    flat = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2.5, 3, 4]}]}
    nested = {
        "id": "r1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], [3, 4]]}],
    }
    a = parse_request(orjson.dumps(flat), None)
    b = parse_request(orjson.dumps(nested), None)
    assert b.id == "r1"
    assert a.inputs[0].shape == b.inputs[0].shape == (2, 2)
    np.testing.assert_array_equal(a.inputs[0].values, [1, 2.5, 3, 4])
    np.testing.assert_array_equal(b.inputs[0].values, [1, 2.5, 3, 4])
    assert a.outputs is None


def test_binary_inputs_every_datatype() -> None:
    f64 = np.arange(6, dtype="<f8")
    i8 = np.array([-1, 2, 3], dtype="<i1")
    u16 = np.array([1, 65535], dtype="<u2")
    booleans = np.array([True, False, True])
    text = serialize_byte_tensor(np.array([b"dsl", "fibre \u00e9".encode()], dtype=object))
    body, length = _binary_request(
        [
            ("a", "FP64", [2, 3], f64.tobytes()),
            ("b", "INT8", [3], i8.tobytes()),
            ("c", "UINT16", [2], u16.tobytes()),
            ("d", "BOOL", [3], booleans.tobytes()),
            ("e", "BYTES", [2], text.item()),
        ]
    )
    request = parse_request(body, length)
    a, b, c, d, e = request.inputs
    np.testing.assert_array_equal(a.values, f64)
    np.testing.assert_array_equal(b.values, i8)
    np.testing.assert_array_equal(c.values, u16)
    np.testing.assert_array_equal(d.values, booleans)
    assert e.values == ["dsl", "fibre \u00e9"]


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}]}, "FP8"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [3], "data": [1, 2]}]}, "needs 3"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1], "data": [1]}]}, "shape"),
        (
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 2], "data": [[1, 2, 3]]}]},
            "nested",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [[1], [2, 3]]}]},
            "evenly nested",
        ),
        ({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]}, "integers"),
        ({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}, "range"),
        ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}]}, "range"),
        ({"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}]}, "true or"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": ["a"]}]}, "numbers"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}]}, "string"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1]}]}, "no data"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": 1}]}, "list"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1], "y": 1}]}, "y"),
        ({"inputs": [1]}, "must be an object"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}], "z": 0}, "z"),
        (
            {
                "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}],
                "outputs": [{"name": "p"}, {"name": "p"}],
            },
            "twice",
        ),
        (
            {
                "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}],
                "outputs": [{"name": "p", "parameters": {"classification": 2}}],
            },
            "classification",
        ),
        (
            {
                "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}],
                "parameters": {"binary_data_output": "yes"},
            },
            "true or false",
        ),
    ],
)
def test_invalid_json_requests_are_refused_with_where(
    document: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_request(orjson.dumps(document), None)
    assert fragment in info.value.message


def test_not_json_is_malformed() -> None:
    with pytest.raises(MalformedRequestError):
        parse_request(b"{nope", None)


def test_malformed_binary_framing() -> None:
    data = np.arange(4, dtype="<f4").tobytes()
    body, length = _binary_request([("x", "FP32", [4], data)])
    # Header longer than the body, not a number, negative.
    for bad in (str(len(body) + 1), "abc", "-1", ""):
        with pytest.raises(MalformedRequestError, match="Inference-Header-Content-Length"):
            parse_request(body, bad)
    # Size that does not match shape x datatype.
    short, short_length = _binary_request([("x", "FP32", [5], data)])
    with pytest.raises(MalformedRequestError, match="need 20"):
        parse_request(short, short_length)
    # binary_data_size past the end of the body.
    with pytest.raises(MalformedRequestError, match="runs past"):
        parse_request(body[:-1], length)
    # Bytes left over after every input.
    with pytest.raises(MalformedRequestError, match="add up to"):
        parse_request(body + b"\0", length)
    # binary_data_size without the header.
    with pytest.raises(InvalidInputError):
        parse_request(body[: int(length)], None)
    # BOOL bytes other than 0/1; BYTES with a broken length prefix.
    flags, flags_length = _binary_request([("b", "BOOL", [2], b"\x00\x07")])
    with pytest.raises(InvalidInputError, match="0 or 1"):
        parse_request(flags, flags_length)
    broken = struct.pack("<I", 10) + b"abc"
    text, text_length = _binary_request([("t", "BYTES", [1], broken)])
    with pytest.raises(MalformedRequestError, match="runs past"):
        parse_request(text, text_length)
    extra = struct.pack("<I", 1) + b"a" + b"zz"
    text, text_length = _binary_request([("t", "BYTES", [1], extra)])
    with pytest.raises(MalformedRequestError, match="left over"):
        parse_request(text, text_length)


def test_response_binary_and_json_outputs() -> None:
    labels = np.array(["setosa", "virginica", "setosa"], dtype=object)
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    flags = np.array([True, False, True])
    outputs = [
        OutputTensor("predict", "BYTES", (3,), labels, binary=True),
        OutputTensor("predict_proba", "FP64", (3, 2), proba, binary=True),
        OutputTensor("flags", "BOOL", (3,), flags, binary=True),
        OutputTensor("json", "FP64", (3, 2), proba, binary=False),
    ]
    body, json_length = encode_response("iris", 2, "abc", outputs)
    assert json_length is not None
    head = orjson.loads(body[:json_length])
    assert head["model_name"] == "iris"
    assert head["model_version"] == "2"
    assert head["id"] == "abc"
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in head["outputs"]]
    assert head["outputs"][3]["data"] == proba.reshape(-1).tolist()
    rest = body[json_length:]
    assert len(rest) == sum(s for s in sizes if s)
    text = deserialize_bytes_tensor(rest[: sizes[0]])
    assert [t.decode() for t in text] == labels.tolist()
    got = np.frombuffer(rest[sizes[0] : sizes[0] + sizes[1]], dtype="<f8").reshape(3, 2)
    np.testing.assert_array_equal(got, proba)
    np.testing.assert_array_equal(np.frombuffer(rest[-3:], dtype=np.bool_), flags)


def test_response_all_json_has_no_header_length() -> None:
    body, json_length = encode_response(
        "d", 1, None, [OutputTensor("predict", "FP64", (2,), np.array([1.5, 2.0]), binary=False)]
    )
    assert json_length is None
    assert orjson.loads(body)["outputs"][0]["data"] == [1.5, 2.0]


def _reference_json(values: np.ndarray) -> bytes:
    """What a JSON output's data must read as: the values as Python numbers."""
    return orjson.dumps(values.reshape(-1).tolist())


@pytest.mark.parametrize(
    "values",
    [
        np.array(
            [0.1 + 0.2, 1.0, -0.0, 5e-324, 1.7976931348623157e308, 1e16, 1e-7, 123456.789, -2.5]
        ),
        np.random.default_rng(7).normal(size=(50, 3)) * 10.0 ** np.arange(-5, 10, 5),
        np.array([0, -1, 2**62, -(2**62), 7], dtype=np.int64),
        np.array([True, False, True]),
        np.array(["setosa", "virginica"], dtype=object),
        np.arange(6, dtype=np.float64).reshape(2, 3).T,  # not C-contiguous
        np.array([0.1, 0.25], dtype=np.float32),  # float32: written as the float64 tolist gives
    ],
)
def test_json_outputs_read_as_python_numbers(values: np.ndarray) -> None:
    tensor = OutputTensor("x", "FP64", values.shape, values, binary=False)
    body, json_length = encode_response("m", 1, None, [tensor])
    assert json_length is None
    data = orjson.loads(body)["outputs"][0]["data"]
    assert orjson.dumps(data) == _reference_json(values)
    assert body.count(b'"data":') == 1
    assert orjson.dumps(values.reshape(-1).tolist()) in body  # byte for byte


def test_binary_outputs_of_non_contiguous_and_other_dtypes() -> None:
    proba = np.arange(12, dtype=np.float64).reshape(3, 4).T  # Fortran order, like a transpose
    ints = np.array([3, 1, 2], dtype=np.int32)  # INT64 output from int32 labels
    outputs = [
        OutputTensor("p", "FP64", proba.shape, proba, binary=True),
        OutputTensor("i", "INT64", (3,), ints, binary=True),
        OutputTensor("b", "BOOL", (3,), np.array([1, 0, 1]), binary=True),
    ]
    body, json_length = encode_response("m", 1, None, outputs)
    assert json_length is not None
    head = orjson.loads(body[:json_length])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [96, 24, 3]
    rest = body[json_length:]
    got = np.frombuffer(rest[:96], dtype="<f8").reshape(4, 3)
    np.testing.assert_array_equal(got, proba)
    np.testing.assert_array_equal(np.frombuffer(rest[96:120], dtype="<i8"), ints)
    assert rest[120:] == b"\x01\x00\x01"


def test_bytes_outputs_with_known_frames_and_unknown_values() -> None:
    frames = frame_texts(["setosa", "versicolor", "é"])
    assert frames["é"] == struct.pack("<I", 2) + "é".encode()
    known = np.array(["versicolor", "é", "setosa", "versicolor"], dtype=object)
    unknown = np.array(["setosa", "other", "setosa"], dtype=object)  # falls back, same framing
    for labels in (known, unknown):
        for given in (frames, None):
            tensor = OutputTensor("predict", "BYTES", labels.shape, labels, True, given)
            body, json_length = encode_response("m", 1, None, [tensor])
            assert json_length is not None
            assert body[json_length:] == serialize_byte_tensor(labels).item()
            decoded = deserialize_bytes_tensor(body[json_length:])
            assert [t.decode() for t in decoded] == labels.tolist()


def _bytes_request(texts: list[str], count: int | None = None, tail: bytes = b"") -> list[str]:
    raw = serialize_byte_tensor(np.array(texts, dtype=object)).item() + tail
    shape = [len(texts) if count is None else count]
    body, length = _binary_request([("t", "BYTES", shape, raw)])
    values = parse_request(body, length).inputs[0].values
    assert isinstance(values, list)
    return values


@pytest.mark.parametrize("distinct", [1, 3, 40])
def test_large_bytes_tensors_decode_like_small_ones(distinct: int) -> None:
    """Large BYTES tensors are split by pattern matching (few distinct lengths) or walked
    (many): either way element for element what tritonclient framed, including values that
    hold regex syntax, nothing, non-ASCII text or bytes that look like a length prefix."""
    tricky = ["", "a", "\x01\x00\x00\x00a", ".*", "(a|b)", "é€", "a\x00b", "month-to-month"]
    values = (tricky + [f"v{i}" for i in range(distinct)])[:distinct]
    rng = np.random.default_rng(distinct)
    texts = [values[i] for i in rng.integers(0, len(values), 3000)]
    assert _bytes_request(texts) == texts
    assert _bytes_request(texts[:5]) == texts[:5]
    framed = memoryview(serialize_byte_tensor(np.array(texts, dtype=object)).item())
    assert split_texts(framed, len(texts)) == texts  # the path taken: few lengths


def test_bytes_tensors_of_many_lengths_are_walked() -> None:
    texts = ["x" * (i % 40) for i in range(3000)]
    assert _bytes_request(texts) == texts
    framed = memoryview(serialize_byte_tensor(np.array(texts, dtype=object)).item())
    assert split_texts(framed, len(texts)) is None
    # A length first seen after the first learning walk and run is learned in a second round.
    late = ["ab"] * 2999 + ["abc"]
    assert _bytes_request(late) == late


def test_bytes_splitting_cost_does_not_grow_with_distinct_long_values() -> None:
    """32 distinct 8 KB elements repeated 256 times: the split pattern depends on the one
    length, not on the values, so decoding costs about what one repeated value costs (a
    pattern of every value seen, as once, took seconds to compile)."""

    def seconds(texts: list[str]) -> float:
        framed = memoryview(serialize_byte_tensor(np.array(texts, dtype=object)).item())
        start = time.perf_counter()
        assert bytes_elements(framed, len(texts), "t") == texts
        return time.perf_counter() - start

    distinct = [f"{i:02d}" + "x" * 8190 for i in range(32)]
    repeated = [distinct[0]] * 256
    spread = [distinct[i % 32] for i in range(256)]
    baseline = min(seconds(repeated) for _ in range(3))
    assert min(seconds(spread) for _ in range(3)) < 10 * baseline + 0.05


def test_large_bytes_tensors_refuse_what_small_ones_refuse() -> None:
    texts = ["one-year", "two-year"] * 500
    framed = serialize_byte_tensor(np.array(texts, dtype=object)).item()
    cases = [
        (texts, 999, b"", MalformedRequestError, "bytes left over after 999 BYTES"),
        (texts, 1001, b"", MalformedRequestError, "element 1000 has no complete 4-byte"),
        (texts, 1001, struct.pack("<I", 9) + b"two", MalformedRequestError, "runs past"),
        (texts, None, b"\x00", MalformedRequestError, "1 bytes left over"),
    ]
    for given, count, tail, error, message in cases:
        with pytest.raises(error, match=message):
            _bytes_request(given, count, tail)
    bad_utf8 = framed[: len(framed) // 2] + struct.pack("<I", 2) + b"\xff\xfe"
    body, length = _binary_request([("t", "BYTES", [501], bad_utf8)])
    with pytest.raises(InvalidInputError, match="BYTES element 500 is not UTF-8"):
        parse_request(body, length)


def test_bytes_data_nested_as_the_shape_at_most() -> None:
    def parse(shape: list[int], data: str, datatype: str = '"BYTES"') -> object:
        tensor = f'{{"name": "t", "datatype": {datatype}, "shape": {shape}, "data": {data}}}'
        return parse_request(f'{{"inputs": [{tensor}]}}'.encode(), None).inputs[0].values

    assert parse([2, 2], '[["a", "b"], ["c", "d"]]') == ["a", "b", "c", "d"]
    assert parse([2, 2], '["a", "b", "c", "d"]') == ["a", "b", "c", "d"]
    deep = "[" * 1000 + '"a"' + "]" * 1000  # deeper than Python recurses
    with pytest.raises(InvalidInputError, match="'t': data is nested deeper than its shape's 1"):
        parse([1], deep)
    with pytest.raises(InvalidInputError, match="datatype a JSON array is not one of"):
        parse([1], '["a"]', deep)


@pytest.mark.parametrize("header", ["²", "1²", "١٢", "\xa012", "12\x00", "-1", "1e3", "0x10", ""])
def test_header_length_is_ascii_digits(header: str) -> None:
    # As the edge hands it over: the header's bytes decoded as latin-1.
    with pytest.raises(MalformedRequestError, match="must be a byte count"):
        split_body(b'{"inputs": []}', header)
    assert split_body(b"{}xy", " 2\t")[0] == b"{}"


def test_elements_beyond_the_limit_are_refused_before_decoding() -> None:
    body, length = _binary_request([("t", "BYTES", [1000], struct.pack("<I", 0) * 1000)])
    assert parse_request(body, length, max_elements=1000).inputs[0].values == [""] * 1000
    with pytest.raises(InvalidInputError, match=r"inputs\[0\] 't': shape \[1000\] makes"):
        parse_request(body, length, max_elements=1000 - 1)  # the framing is not even read
    two = [("a", "FP64", [3], bytes(24)), ("b", "FP64", [3], bytes(24))]
    body, length = _binary_request(two)
    with pytest.raises(InvalidInputError, match=r"inputs\[1\] 'b': shape \[3\] makes"):
        parse_request(body, length, max_elements=5)

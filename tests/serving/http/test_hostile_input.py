"""Garbage, huge and odd input over HTTP: always a small 4xx JSON error, never a 5xx, and the
service keeps answering."""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.serving.conftest import RunningServer
from tests.serving.http.test_app import CHURN, IRIS, _error

IRIS_PATH = "/models/iris/predict"
JSON = {"content-type": "application/json"}


def _post(client: httpx.Client, body: bytes | str, path: str = IRIS_PATH) -> httpx.Response:
    return client.post(path, content=body, headers=JSON)


def _still_serving(client: httpx.Client) -> None:
    assert client.post(IRIS_PATH, json={"instances": [IRIS]}).json()["predictions"] == ["setosa"]


# Around Python's recursion limit (1000) and orjson's depth limit (1024), and far beyond.
@pytest.mark.parametrize("depth", [100, 990, 1010, 1023, 1025, 200_000])
def test_deeply_nested_json_is_a_4xx(client: httpx.Client, depth: int) -> None:
    for body in (
        '{"rows": ' + "[" * depth + "]" * depth + "}",
        "[" * depth + "]" * depth,
        '{"rows": [[' + '{"a": ' * depth + "1" + "}" * depth + "]]}",
        '{"rows": ' + "[" * depth,  # and never closed
    ):
        response = _post(client, body)
        assert 400 <= response.status_code < 500, response.text[:200]
        assert len(response.content) < 20_000
    _still_serving(client)


@pytest.mark.parametrize(
    "literal", ["1e400", "-1e400", "1" + "0" * 400, "1e-400", "123456789" * 50]
)
def test_huge_and_tiny_numbers(client: httpx.Client, literal: str) -> None:
    response = _post(client, '{"rows": [[5.1, 3.5, ' + literal + ", 0.2]]}")
    if literal == "1e-400":  # underflows to 0.0, a fine number
        assert response.status_code == 200
        return
    error = _error(response, 422, "validation_error")
    assert error["details"][0]["loc"] == ["rows", 0, 2]
    response = _post(
        client,
        '{"instances": [{'
        + ", ".join(
            f'"{k}": {literal if k == "tenure_months" else _json(v)}' for k, v in CHURN.items()
        )
        + "}]}",
        "/models/churn/predict",
    )
    _error(response, 422, "validation_error")


def _json(value: Any) -> str:
    return httpx.Response(200, json=value).text


def test_very_long_strings_get_short_errors(client: httpx.Client) -> None:
    long = "x" * 1_000_000
    for body in (
        {"instances": [{**CHURN, "contract": long}]},  # a category value
        {"instances": [{**CHURN, long: 1}]},  # a key
        {"rows": [[long, 3.5, 1.4, 0.2]]},  # where a number belongs
    ):
        path = IRIS_PATH if "rows" in body else "/models/churn/predict"
        response = client.post(path, json=body)
        _error(response, 422, "validation_error")
        assert len(response.content) < 5_000
    response = _post(client, '"' + long + '"')
    assert 400 <= response.status_code < 500
    _still_serving(client)


def test_empty_and_non_utf8_bodies_are_400(client: httpx.Client) -> None:
    for body in (b"", b" ", b"\xff\xfe{}", b'{"rows": [[5.1, 3.5, 1.4, 0.2]]}\x00'):
        _error(_post(client, body), 400, "malformed_json")
    response = _post(client, b'{"rows": [["\\ud800", 3.5, 1.4, 0.2]]}')  # lone surrogate
    assert 400 <= response.status_code < 500


def test_duplicated_keys_last_one_wins(client: httpx.Client) -> None:
    # As Python's json and most parsers do (RFC 8259 leaves it open): documented behaviour.
    body = '{"rows": [[1, 1, 1, 1], [2, 2, 2, 2]], "rows": [[5.1, 3.5, 1.4, 0.2]]}'
    assert _post(client, body).json()["predictions"] == ["setosa"]
    record = '{"sepal_length_cm": 100, ' + _json(IRIS)[1:]
    assert _post(client, '{"instances": [' + record + "]}").json()["predictions"] == ["setosa"]


def test_integer_features_take_whole_floats(client: httpx.Client) -> None:
    def churn(tenure: Any) -> httpx.Response:
        return client.post(
            "/models/churn/predict", json={"instances": [{**CHURN, "tenure_months": tenure}]}
        )

    assert churn(49.0).json()["predictions"] == churn(49).json()["predictions"]
    assert churn(4.9e1).status_code == 200
    for bad in (49.5, "49", True, 1e300, 2**53 + 1, -(2**53) - 1):
        error = _error(churn(bad), 422, "validation_error")
        assert error["details"][0]["loc"] == ["instances", 0, "tenure_months"], bad


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"content-type": "text/plain"}, 415),
        ({"content-type": "application/x-www-form-urlencoded"}, 200),  # what curl -d sends
        ({"content-type": "application/xml"}, 415),
        ({"content-type": "application/json", "content-encoding": "gzip"}, 415),
        ({"content-type": "application/json; charset=utf-8"}, 200),
        ({"content-type": "application/vnd.api+json"}, 200),
        ({}, 200),  # no header: taken as JSON
    ],
)
def test_content_type_and_encoding(
    client: httpx.Client, headers: dict[str, str], status: int
) -> None:
    body = b'{"rows": [[5.1, 3.5, 1.4, 0.2]]}'
    for path in (IRIS_PATH, "/models/iris/versions/1/predict"):
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == status, response.text
        if status == 415:
            error = _error(response, 415, "unsupported_media_type")
            assert error["details"][0]["loc"][0] == "header"


# -- the Open Inference Protocol ---------------------------------------------------------------

V2_IRIS = "/v2/models/iris/infer"


def _v2_error(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    assert "Traceback" not in response.text
    message: str = response.json()["error"]
    return message


def _framed(texts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


def _binary_bytes_request(name: str, texts: list[bytes]) -> tuple[bytes, dict[str, str]]:
    raw = _framed(texts)
    tensor = {"name": name, "shape": [len(texts)], "datatype": "BYTES"}
    head = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]})
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def _distinct_long() -> list[bytes]:
    distinct = [f"{i:02d}".encode() + b"x" * 8190 for i in range(32)]
    return [distinct[i % 32] for i in range(256)]


@pytest.mark.parametrize(
    ("texts", "refusal"),
    [
        # Decoding these once compiled a pattern of every element seen so far, per new one.
        (_distinct_long(), "unknown input(s) 't'"),
        # 6 MB of empty elements: decoded, a second or more, before any check of the rows.
        ([b""] * 1_500_000, "'t': shape [1500000] makes the inputs hold far more elements"),
    ],
    ids=["32-distinct-8KB-elements", "1.5M-empty-elements"],
)
def test_bytes_tensors_do_not_stall_the_event_loop(
    server: RunningServer, client: httpx.Client, texts: list[bytes], refusal: str
) -> None:
    """Requests that once held the event loop for seconds, during which even the liveness
    probe waited: now each is answered, and the probe stays prompt."""
    body, headers = _binary_bytes_request("t", texts)
    stalls: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with server.client() as prober:
            while not stop.is_set():
                start = time.perf_counter()
                assert prober.get("/health/live").status_code == 200
                stalls.append(time.perf_counter() - start)
                time.sleep(0.01)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        while not stalls:
            time.sleep(0.01)
        for _ in range(3):
            response = client.post(V2_IRIS, content=body, headers=headers)
            assert refusal in _v2_error(response)
        time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert max(stalls) < 0.5, f"the liveness probe waited {max(stalls):.2f} s"
    _still_serving(client)


@pytest.mark.parametrize("depth", [990, 1010, 1021, 1025])
def test_v2_deeply_nested_values_are_400_naming_the_tensor(
    client: httpx.Client, depth: int
) -> None:
    """Nested around Python's recursion limit (BYTES data, a BYTES element, a datatype):
    each once raised RecursionError (a 500 and a traceback in the log); beyond orjson's
    depth limit (1024) the body is not JSON the service reads."""
    deep = "[" * depth + '"a"' + "]" * depth
    deep_object = '{"a":' * depth + "1" + "}" * depth
    tensor = '{"name":"t","shape":[1],'
    for value in (
        tensor + '"datatype":"BYTES","data":' + deep + "}",
        tensor + '"datatype":"BYTES","data":[' + deep_object + "]}",
        tensor + '"datatype":' + deep + ',"data":["a"]}',
    ):
        message = _v2_error(client.post(V2_IRIS, content='{"inputs":[' + value + "]}"))
        # The document nests 3 or 4 deeper than the value.
        assert "inputs[0] 't'" in message or (depth > 1020 and "depth limit" in message)
        assert len(message) < 500
    _still_serving(client)


@pytest.mark.parametrize("value", ["²".encode("latin-1"), "١٢".encode(), b"\xff", b"1\xa0"])
def test_numbers_in_headers_are_ascii_or_400(client: httpx.Client, value: bytes) -> None:
    """A length header of non-ASCII digits ("²" passes str.isdigit, then int() refuses it)
    was a 500 with a traceback in the log."""
    body, _ = _binary_bytes_request("t", [b"a"])
    headers = {b"inference-header-content-length": value}
    assert "must be a byte count" in _v2_error(client.post(V2_IRIS, content=body, headers=headers))
    timeout = {b"x-request-timeout": value}
    assert "X-Request-Timeout" in _v2_error(client.post(V2_IRIS, content=body, headers=timeout))
    error = _error(
        client.post(IRIS_PATH, json={"rows": [IRIS]}, headers=timeout), 400, "bad_request"
    )
    assert error["details"][0]["loc"] == ["header", "x-request-timeout"]
    _still_serving(client)

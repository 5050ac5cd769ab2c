"""The request edge on a real server: the limits it enforces answer in the shape of the API
the path belongs to, on the paths it answers itself and on those the app answers, and every
answer carries the request id. The app's own failures on the paths it answers are driven in
process, with an app that fails on purpose."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.core.admission import _SWEEPERS
from serving.http.edge import Edge
from serving.observe.observability import Observability
from serving.settings import Settings
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, RunningServer, quiet_settings, running_server
from tests.serving.raw_http import until_closed

TOKEN = "edge-test-token"
LIMIT = 4096
BUDGET = 3000
INFER = "/v2/models/iris/infer"


@pytest.fixture(scope="module")
def live(trained_store: ModelStore) -> Iterator[RunningServer]:
    settings = quiet_settings(
        trained_store,
        pool_size=1,
        poll_interval_s=0,
        max_body_bytes=LIMIT,
        max_inflight_body_bytes=BUDGET,
        request_timeout_s=1.0,
        admin_token=TOKEN,
    )
    with running_server(settings) as server:
        yield server


@pytest.fixture
def http(live: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        yield client


def _v2_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str)
    assert response.headers["x-request-id"]
    return body["error"]


def _chunks(size: int) -> Iterator[bytes]:
    """A body without Content-Length (sent chunked), counted only as it arrives."""
    yield b'{"inputs": ['
    sent = 12
    while sent < size:
        yield b" " * 1024
        sent += 1024
    yield b"]}"


def test_v2_refusals_at_the_edge_have_the_protocol_shape(http: httpx.Client) -> None:
    big = http.post(INFER, content=b" " * (LIMIT + 1), headers={"content-type": "application/json"})
    assert "limit of 4096 bytes" in _v2_error(big, 413)
    bad_timeout = http.post(INFER, json={"inputs": []}, headers={"x-request-timeout": "soon"})
    assert "X-Request-Timeout" in _v2_error(bad_timeout, 400)
    bad_id = http.post(INFER, json={"inputs": []}, headers={"x-request-id": "a b"})
    assert "X-Request-ID" in _v2_error(bad_id, 400)
    chunked = http.post(INFER, content=_chunks(LIMIT * 2))
    assert "limit" in _v2_error(chunked, 413)


def test_a_slow_v2_body_is_408_in_the_protocol_shape(live: RunningServer) -> None:
    port = int(live.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            "content-length: 100\r\n\r\n{".encode()
        )
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    assert "deadline of 1 s" in json.loads(body)["error"]


def test_chunked_bodies_over_the_limit_are_413_on_served_and_routed_paths(
    http: httpx.Client,
) -> None:
    served = http.post("/models/iris/predict", content=_chunks(LIMIT * 2))
    assert served.status_code == 413, served.text
    assert served.json()["error"]["type"] == "payload_too_large"
    routed = http.post(
        "/v2/repository/index",
        content=_chunks(LIMIT * 2),
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert "limit" in _v2_error(routed, 413)
    # Neither refused request is left for the deadline sweeper (it would cancel it later).
    assert all(not s.watched and not s.expired for s in _SWEEPERS.values())
    # The service goes on answering.
    ok = http.post("/models/iris/predict", json={"rows": [IRIS_ROW]})
    assert ok.status_code == 200, ok.text


ENDLESS_CAP = 256 * 1024 * 1024
"""Where the endless body stops: far beyond any limit, well below what the box can hold."""


def _endless_chunked_post(
    port: int, path: str, extra_headers: str = ""
) -> tuple[bytes, int, float]:
    """POST a chunked body that does not end (up to ENDLESS_CAP) until the server answers or
    closes; return the answer, the body bytes sent and the seconds it took."""
    piece = b" " * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        # A small send buffer: what the kernel holds for the server is not counted as read.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.settimeout(10)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            # A long deadline: only the size limit may stop this body.
            f"x-request-timeout: 60\r\ntransfer-encoding: chunked\r\n{extra_headers}\r\n".encode()
        )
        while sent < ENDLESS_CAP and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed; the answer is still readable
            sent += len(piece)
        answer = b""
        try:
            while data := sock.recv(65536):  # until the server closes the connection
                answer += data
        except ConnectionResetError:
            pass  # closed with our unread chunks in its buffer: the answer came first
        except TimeoutError:
            pass  # no answer at all: the assertions say what was sent
    return answer, sent, time.monotonic() - started


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/models/iris/predict", ""),  # answered by the edge itself
        ("/v2/repository/index", f"authorization: Bearer {TOKEN}\r\n"),  # by the app
    ],
)
def test_an_endless_chunked_body_is_refused_once_past_the_limit(
    live: RunningServer, http: httpx.Client, path: str, headers: str
) -> None:
    port = int(live.url.rsplit(":", 1)[1])
    answer, sent, seconds = _endless_chunked_post(port, path, headers)
    head, _, _ = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), (answer[:300], sent, seconds)
    assert b"connection: close" in head.lower()
    # Refused as the limit is crossed, not after buffering: what went out is the limit plus
    # what the loopback's buffers hold, nowhere near the cap.
    assert sent <= LIMIT + 2 * 1024 * 1024, sent
    assert seconds < 10
    assert http.post("/models/iris/predict", json={"rows": [IRIS_ROW]}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("POST", "/models/iris/predict", {"rows": [IRIS_ROW]}, {}, 200),
        ("POST", "/models/iris/predict", {"rows": [[1.0]]}, {}, 422),
        ("POST", "/models/iris/predict", {"rows": [IRIS_ROW]}, {"content-type": "text/csv"}, 415),
        ("POST", "/models/nope/predict", {"rows": [IRIS_ROW]}, {}, 404),
        ("POST", INFER, {"inputs": []}, {}, 400),
        ("GET", "/health/ready", None, {}, 200),
        ("GET", "/nowhere", None, {}, 404),
    ],
)
def test_every_answer_echoes_the_request_id(
    http: httpx.Client,
    method: str,
    path: str,
    body: object,
    headers: dict[str, str],
    status: int,
) -> None:
    content = json.dumps(body).encode() if body is not None else None
    sent = {"content-type": "application/json", "x-request-id": "edge-42", **headers}
    response = http.request(method, path, content=content, headers=sent)
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"] == "edge-42"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_chunked_bodies_count_against_the_byte_budget_as_they_arrive(
    live: RunningServer,
) -> None:
    port = int(live.url.rsplit(":", 1)[1])
    predict = b"POST /models/iris/predict HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
    chunked = predict + b"transfer-encoding: chunked\r\n"
    rows = json.dumps({"rows": [IRIS_ROW]}).encode()
    padded = rows[:-1] + b" " * 2000  # whitespace is valid JSON: the closing brace comes later
    with socket.create_connection(("127.0.0.1", port)) as first:
        # Within the budget (and alone): admitted, its body not finished yet.
        first.sendall(chunked + b"x-request-timeout: 10\r\n\r\n" + _chunk(padded))
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port)) as declared:
            declared.sendall(predict + b"content-length: 2000\r\n\r\n")
            shed = until_closed(declared)
        with socket.create_connection(("127.0.0.1", port)) as undeclared:
            undeclared.sendall(chunked + b"\r\n" + _chunk(padded))
            shed_later = until_closed(undeclared)
        for answer in (shed, shed_later):
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), answer
            assert b"retry-after: 1" in head.lower()
            assert json.loads(body)["error"]["type"] == "overloaded"
        first.sendall(_chunk(b"}") + b"0\r\n\r\n")
        first.settimeout(10)
        answer = first.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    shedder = live.app.edge.shedder
    deadline = time.monotonic() + 5
    while shedder.inflight_bytes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert shedder.inflight_bytes == 0


def test_no_route_of_the_app_answers_predict_or_infer_paths(live: RunningServer) -> None:
    from serving.http.app import ServiceApp

    assert "__call__" not in vars(ServiceApp)  # the edge is a middleware, not an override
    paths = {getattr(route, "path", "") for route in live.app.routes}
    assert not [p for p in paths if p.endswith(("/predict", "/infer"))], paths
    documented = set(live.app.openapi()["paths"])
    assert {"/models/iris/predict", "/models/iris/versions/1/predict"} <= documented
    assert {"/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"} <= documented


def test_the_edge_answers_unknown_models_bad_versions_and_other_methods(
    http: httpx.Client,
) -> None:
    row = {"instances": [IRIS_ROW]}
    unknown = http.post("/models/rose/predict", json=row)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "model_not_found"
    bad = http.post("/models/iris/versions/01/predict", json=row)
    assert bad.status_code == 422
    assert bad.json()["error"]["details"] == [
        {"loc": ["path", "version"], "msg": "String should match pattern '^[1-9][0-9]{0,17}$'"}
    ]
    assert "path.version" in _v2_error(http.post("/v2/models/iris/versions/01/infer"), 400)
    assert "no model named 'rose'" in _v2_error(http.post("/v2/models/rose/infer", json={}), 404)
    wrong = http.get("/models/iris/predict")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    assert _v2_error(http.get(INFER), 405) == "Method Not Allowed"
    assert http.post("/models/a/b/predict", json=row).json()["error"]["type"] == "not_found"


# -- the app failing on a path it answers (in process: an app that fails on purpose) ---------


def _through_edge(
    app: ASGIApp, chunks: list[bytes], **overrides: Any
) -> tuple[int | None, dict[bytes, bytes], bytes]:
    """Send one POST /elsewhere with ``chunks`` as its body through an edge in front of
    ``app``; the edge's response (status, headers, body). An empty chunk ends the body;
    without one, a receive past the last chunk waits for ever (a client that stops sending)."""
    settings = Settings(metrics=False, access_log=False, log_level="warning", **overrides)
    edge = Edge(settings, Observability(settings)).around(app)
    sent: list[Message] = []
    scope = {"type": "http", "method": "POST", "path": "/elsewhere", "headers": []}

    async def receive() -> Message:
        if not chunks:
            await asyncio.Event().wait()
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": chunk != b""}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(edge(scope, receive, send))
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:
        return None, {}, b""
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


async def _reads_body_then_fails(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body", False):
        pass
    raise ValueError("the app failed")


async def _fails_after_starting(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise ValueError("the app failed")


def test_an_app_failing_before_its_response_is_a_500_with_the_id() -> None:
    status, headers, body = _through_edge(_reads_body_then_fails, [b"{}", b""])
    assert status == 500
    assert json.loads(body)["error"]["type"] == "internal_error"
    assert headers[b"x-request-id"]


def test_an_app_failing_after_its_response_began_raises_its_own_error() -> None:
    with pytest.raises(ValueError, match="the app failed"):
        _through_edge(_fails_after_starting, [b"{}", b""])


def test_an_app_body_over_the_limit_is_413_and_closes_whatever_the_app_made_of_it() -> None:
    status, headers, body = _through_edge(
        _reads_body_then_fails, [b"x" * 3000, b"x" * 3000, b""], max_body_bytes=LIMIT
    )
    assert status == 413
    assert headers[b"connection"] == b"close"
    assert json.loads(body)["error"]["type"] == "payload_too_large"


def test_an_app_body_that_stops_arriving_is_408_and_closes() -> None:
    status, headers, body = _through_edge(
        _reads_body_then_fails, [b"x" * 100], request_timeout_s=0.2
    )
    assert status == 408
    assert headers[b"connection"] == b"close"
    assert "within the deadline of 0.2 s" in json.loads(body)["error"]["message"]

"""Log formats, the request id in every line of a request, and the access log."""

from __future__ import annotations

import io
import json
import logging
import socket
import sys
from typing import Literal
from urllib.parse import urlsplit

import pytest

from serving.core.context import CURRENT, RequestInfo, new_request_id, valid_request_id
from serving.observe.logs import (
    AccessLog,
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    resolve_format,
)
from serving.store import ModelStore
from tests.serving.conftest import quiet_settings, running_server

FORGED = "2026-01-01 00:00:00,000 INFO servewell.access [x]: POST /admin/models/iris/promote/1 200"


def _record(message: str) -> logging.LogRecord:
    record = logging.LogRecord("servewell", logging.WARNING, __file__, 1, message, None, None)
    RequestIdFilter().filter(record)
    return record


def test_json_lines_carry_the_request_id_of_the_context() -> None:
    token = CURRENT.set(RequestInfo("req-42"))
    try:
        inside = json.loads(JsonFormatter().format(_record("inside")))
    finally:
        CURRENT.reset(token)
    outside = json.loads(JsonFormatter().format(_record("outside")))
    assert inside["request_id"] == "req-42"
    assert inside["message"] == "inside"
    assert inside["level"] == "WARNING"
    assert inside["logger"] == "servewell"
    assert inside["ts"].endswith("+00:00")
    assert "request_id" not in outside


def test_exceptions_stay_inside_one_json_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "servewell", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_text_lines_show_the_request_id() -> None:
    token = CURRENT.set(RequestInfo("req-7"))
    try:
        line = TextFormatter().format(_record("hello"))
    finally:
        CURRENT.reset(token)
    assert "WARNING servewell [req-7]: hello" in line


def test_auto_format_is_text_at_a_terminal_only() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", Tty()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Tty()) == "json"


def test_access_log_writes_one_json_object_per_request() -> None:
    out = io.StringIO()
    access = AccessLog("json", out)
    access.add((1_700_000_000.5, "r1", "POST", "/models/iris/predict", 200, 0.0012, "iris", "3", 2))
    access.add((1_700_000_000.6, "r2", "GET", "/health/live", 404, 0.0001, "", "", 0))
    access.flush()
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["request_id"] == "r1"
    assert first["status"] == 200
    assert first["version"] == 3
    assert first["rows"] == 2
    assert first["latency_ms"] == 1.2
    assert first["logger"] == "servewell.access"
    assert second["request_id"] == "r2"
    assert "model" not in second


def test_access_log_thread_flushes_and_stops() -> None:
    out = io.StringIO()
    access = AccessLog("text", out, interval=0.01)
    access.start()
    access.add((1_700_000_000.5, "r1", "POST", "/models/iris/predict", 200, 0.0012, "iris", "3", 2))
    access.stop()
    assert "[r1]: POST /models/iris/predict 200 1.20 ms iris v3 rows=2" in out.getvalue()


def test_request_ids() -> None:
    assert valid_request_id(b"a" * 128)
    assert valid_request_id(b"trace-1:span/2+x=y@z_.")
    for bad in (b"", b"a" * 129, b"a b", b"a\nb", b"a;b", "é".encode()):
        assert not valid_request_id(bad), bad
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(valid_request_id(i.encode()) for i in ids)


def test_text_records_are_one_line_whatever_the_client_sent() -> None:
    try:
        raise ValueError("boom\n" + FORGED)
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "servewell", logging.ERROR, __file__, 1, "on GET %s", ("/a\n" + FORGED,), exc_info
    )
    lines = TextFormatter().format(record).splitlines()
    assert lines[0].endswith("on GET /a\\n" + FORGED)
    assert all(line.startswith("    ") for line in lines[1:])  # the traceback, indented
    assert lines[-1] == "    " + FORGED
    for text in ("a\rb", "a\x85b", "a\u2028b", "a\x00b", "a\x1b[31mb"):
        line = TextFormatter().format(_record(text))
        assert line.isprintable(), line
        assert line.endswith(repr(text)[1:-1]), line


def test_access_lines_escape_the_path() -> None:
    out = io.StringIO()
    for fmt in ("text", "json"):
        access = AccessLog(fmt, out)
        access.add(
            (1_700_000_000.5, "r1", "GET", "/a\n" + FORGED + "\r\u2028", 404, 0.001, "", "", 0)
        )
        access.flush()
    text, line = out.getvalue().split("\n")[:2]
    assert text.endswith("GET /a\\n" + FORGED + "\\r\\u2028 404 1.00 ms")
    assert json.loads(line)["path"] == "/a\n" + FORGED + "\r\u2028"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_path_that_decodes_to_a_newline_cannot_forge_a_log_line(
    trained_store: ModelStore, capfd: pytest.CaptureFixture[str], fmt: Literal["text", "json"]
) -> None:
    settings = quiet_settings(trained_store, pool_size=1, log_level="info", log_format=fmt)
    path = "/nothing%0a" + FORGED.replace(" ", "%20")
    with running_server(settings) as running:
        address = urlsplit(running.url)
        with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 404")
    lines = [line for line in capfd.readouterr().err.splitlines() if "nothing" in line]
    assert len(lines) == 1, lines
    if fmt == "json":
        assert json.loads(lines[0])["path"] == "/nothing\n" + FORGED
    else:
        assert "GET /nothing\\n" + FORGED + " 404" in lines[0]

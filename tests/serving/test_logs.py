"""Log formats, the request id in every line of a request, and the access log."""

from __future__ import annotations

import io
import json
import logging

from serving.logs import AccessLog, JsonFormatter, RequestIdFilter, TextFormatter, resolve_format
from serving.request_context import CURRENT, RequestInfo, new_request_id, valid_request_id


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

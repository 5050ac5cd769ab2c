import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import wrk

LINE = (
    '@@WRK_JSON {"duration_us":2000000,"requests":5000,"bytes":800000,'
    '"errors":{"connect":1,"read":2,"write":3,"status":4,"timeout":5},'
    '"latency_us":{"min":100,"mean":1500.5,"max":90000,"stdev":10.0,'
    '"p50":1200,"p90":2500,"p99":8000,"p999":20000}}'
)
HUMAN = "Running 2s test @ http://127.0.0.1:1/x\n  1 threads and 10 connections\n"


def test_parse_output_reads_the_marker_line_among_wrk_text() -> None:
    result = wrk.parse_output(HUMAN + LINE + "\nRequests/sec: 2500.00\n")
    assert result.requests == 5000
    assert result.duration_s == pytest.approx(2.0)
    assert result.requests_per_s == pytest.approx(2500.0)
    assert result.latency.p50 == pytest.approx(1.2)
    assert result.latency.p99 == pytest.approx(8.0)
    assert result.errors.socket == 1 + 2 + 3 + 5
    assert result.errors.total == 15


def test_parse_output_without_marker_raises() -> None:
    with pytest.raises(wrk.WrkError, match="no @@WRK_JSON"):
        wrk.parse_output(HUMAN)


def test_parse_output_with_missing_field_raises() -> None:
    with pytest.raises(wrk.WrkError, match="malformed"):
        wrk.parse_output('@@WRK_JSON {"duration_us":1}\n')


def test_command_passes_bodies_and_path_to_the_script_and_caps_threads() -> None:
    cmd = wrk.command(
        "wrk",
        "http://127.0.0.1:9",
        "/models/iris/predict",
        Path("/tmp/b.jsonl"),
        connections=1,
        threads=2,
        duration_s=2.4,
        timeout_s=2,
    )
    assert "--threads=1" in cmd
    assert "--duration=2s" in cmd
    assert f"--script={wrk.LUA_SCRIPT}" in cmd
    assert cmd[-4:] == [
        "http://127.0.0.1:9/models/iris/predict",
        "--",
        "/tmp/b.jsonl",
        "/models/iris/predict",
    ]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[bytes] = []  # every body received, shared by all handler instances

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.append(body)
        status = 200 if json.loads(body)["n"] % 2 == 0 else 500
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request log line."""


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.skipif(wrk.find_wrk() is None, reason="wrk is not installed")
def test_lua_script_cycles_bodies_and_reports_status_errors(
    http_server: str, tmp_path: Path
) -> None:
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(4)))
    _Handler.bodies.clear()
    wrk_path = wrk.find_wrk()
    assert wrk_path is not None
    run = wrk.run(
        wrk_path, http_server, "/p", bodies, connections=1, threads=1, duration_s=1, timeout_s=2
    )
    sent = {json.loads(b)["n"] for b in _Handler.bodies}
    assert sent == {0, 1, 2, 3}
    # The server may have seen one more request: the one in flight when wrk stopped.
    assert run.result.requests <= len(_Handler.bodies) <= run.result.requests + 1
    # Odd bodies get a 500: wrk counts them as status errors.
    assert run.result.errors.status == pytest.approx(run.result.requests / 2, abs=2)
    assert run.result.latency.p50 > 0

"""A client that hangs up while its rows wait in the queue: the rows are withdrawn."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, quiet_settings, running_server


def _post_raw(port: int, rows: int) -> socket.socket:
    body = json.dumps({"rows": [IRIS_ROW] * rows}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /models/iris/predict HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def _until(condition: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_rows_of_a_client_that_hung_up_are_never_predicted(trained_store: ModelStore) -> None:
    settings = quiet_settings(trained_store, inference="pool", pool_size=1, request_timeout_s=60)
    with running_server(settings) as server:
        port = int(server.url.rsplit(":", 1)[1])
        worker = server.app.state.dataplane.executor.pids[0]
        batcher = server.app.state.dataplane.resolve("iris").batcher
        os.kill(worker, signal.SIGSTOP)
        try:
            busy = _post_raw(port, 1)  # on the stopped worker
            assert _until(lambda: batcher.in_flight == 1)
            leaving = _post_raw(port, 7)
            assert _until(lambda: batcher.queued_rows == 7)
            leaving.close()
            assert _until(lambda: batcher.withdrawn == 1)  # long before its 60 s deadline
            assert batcher.queued_rows == 0
        finally:
            os.kill(worker, signal.SIGCONT)
        busy.settimeout(30)
        assert busy.recv(100).startswith(b"HTTP/1.1 200")
        busy.close()
        assert batcher.batches == 1  # the 7 rows never went to the worker

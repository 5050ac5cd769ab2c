"""Reading wrk's result line, and the command line the driver runs."""

from pathlib import Path

import pytest

from bench import wrk

LINE = (
    '@@WRK_JSON {"duration_us":2000000,"requests":5000,'
    '"errors":{"connect":1,"read":2,"write":0,"status":3,"timeout":4},'
    '"latency_us":{"mean":900.5,"max":20000,"p50":800,"p90":1500,"p99":4000}}'
)


def test_the_result_line_is_found_among_other_output_and_parsed() -> None:
    result = wrk.parse(f"Running 2s test @ http://x\n{LINE}\nRequests/sec: 2500\n")
    assert result.requests_per_s == 2500
    assert (result.socket_errors, result.status_errors, result.errors) == (7, 3, 10)
    assert (result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms) == (0.8, 1.5, 4.0, 20.0)


@pytest.mark.parametrize("stdout", ["no result here", '@@WRK_JSON {"requests": 1}'])
def test_output_without_a_complete_result_is_an_error(stdout: str) -> None:
    with pytest.raises(wrk.WrkError):
        wrk.parse(stdout)


def test_the_command_sends_the_bodies_file_and_path_to_the_script() -> None:
    url = "http://127.0.0.1:8000/v2/models/iris/infer"
    cmd = wrk.command("wrk", url, Path("b.rec"), 100, 2.4, 2.0)
    flags = ["--connections=100", "--threads=1", "--duration=2s", "--timeout=2s"]
    assert cmd[1:6] == [*flags, f"--script={wrk.SCRIPT}"]
    assert cmd[6:] == [url, "--", "b.rec", "/v2/models/iris/infer"]
    assert "--threads=1" in wrk.command("wrk", url, Path("b"), 1, 1, 1, threads=2)

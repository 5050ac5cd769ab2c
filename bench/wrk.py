"""The load driver: wrk with ``bench/post.lua``, whose ``done()`` prints one ``@@WRK_JSON {...}``
line, so nothing here depends on wrk's human-readable output; for ``grpc://`` addresses
``bench/grpc_load.py``, which prints the same line."""

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

from bench import grpc_load

SCRIPT = Path(__file__).with_name("post.lua")
INSTALL_HINT = "wrk is not on PATH: `apt-get install wrk`, `brew install wrk` or build wg/wrk"


class WrkError(Exception):
    """wrk could not run, or printed no result."""


@dataclass(frozen=True)
class Result:
    duration_s: float
    requests: int
    socket_errors: int
    """Connect, read and write errors and timeouts. A request still unanswered when the run
    ends counts as nothing: a server that never accepts a connection shows fewer requests."""
    status_errors: int
    """Answers with HTTP status >= 400 (wrk's rule; no endpoint redirects)."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.status_errors


def parse(stdout: str) -> Result:
    """The result from wrk's stdout (the line ``post.lua``'s ``done()`` printed)."""
    if (match := re.search(r"^@@WRK_JSON (\{.*\})\s*$", stdout, re.MULTILINE)) is None:
        raise WrkError(f"no @@WRK_JSON line in wrk output:\n{stdout[-2000:]}")
    try:
        raw = json.loads(match.group(1))
        err, lat = raw["errors"], raw["latency_us"]
        sockets = sum(int(err[k]) for k in ("connect", "read", "write", "timeout"))
        ms = [lat[p] / 1000 for p in ("p50", "p90", "p99", "max")]
        return Result(raw["duration_us"] / 1e6, raw["requests"], sockets, err["status"], *ms)
    except (ValueError, KeyError, TypeError) as exc:
        raise WrkError(f"malformed wrk result: {match.group(0)!r}") from exc


def find() -> str | None:
    return shutil.which("wrk")


def command(
    wrk: str, url: str, bodies: Path, conns: int, seconds: float, timeout_s: float, threads: int = 1
) -> list[str]:
    """One wrk thread by default: the box has 2 cores and the servers need them."""
    if url.startswith(grpc_load.SCHEME):
        return grpc_load.command(url, bodies, conns, seconds, timeout_s)
    flags = [f"--connections={conns}", f"--threads={min(threads, conns)}"]
    flags += [f"--duration={max(1, round(seconds))}s", f"--timeout={max(1, round(timeout_s))}s"]
    return [wrk, *flags, f"--script={SCRIPT}", url, "--", str(bodies), "/" + url.split("/", 3)[3]]


def start(cmd: list[str], cpus: set[int] | None = None) -> "subprocess.Popen[str]":
    """Start wrk, on ``cpus`` if given (set before exec: its threads inherit it)."""
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    try:
        return subprocess.Popen(cmd, stdout=PIPE, stderr=PIPE, text=True, preexec_fn=pin)
    except OSError as exc:
        raise WrkError(f"could not run wrk: {exc}") from exc


def finish(proc: "subprocess.Popen[str]", limit_s: float) -> Result:
    """Wait for a started wrk (killed after ``limit_s``) and parse its result."""
    try:
        stdout, stderr = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {limit_s:.0f} s") from exc
    finally:
        if proc.poll() is None:  # it may not go on loading a server into the next run
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}: {stderr.strip()[-2000:]}")
    return parse(stdout)


def run(
    wrk: str, url: str, bodies: Path, conns: int, seconds: float, timeout_s: float, threads: int = 1
) -> Result:
    cmd = command(wrk, url, bodies, conns, seconds, timeout_s, threads)
    return finish(start(cmd), seconds + timeout_s + 30)

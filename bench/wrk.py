"""Run wrk against one URL with prepared POST bodies and parse its result.

wrk reports through ``bench/post.lua``'s ``done()``, which prints one ``@@WRK_JSON {...}``
line, so nothing here depends on wrk's human-readable output format.
"""

import json
import re
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).with_name("post.lua")
RESULT_MARKER = "@@WRK_JSON "
INSTALL_HINT = (
    "wrk is not installed. Install it with:\n"
    "    sudo apt-get update && sudo apt-get install -y wrk      # Debian/Ubuntu\n"
    "    brew install wrk                                        # macOS\n"
    "or build it from https://github.com/wg/wrk and put it on PATH."
)


class WrkError(Exception):
    """wrk could not run or produced no parsable result."""


@dataclass(frozen=True)
class Errors:
    """Failed requests by kind; ``status`` counts HTTP responses >= 400 (wrk's own rule)."""

    connect: int
    read: int
    write: int
    timeout: int
    status: int

    @property
    def socket(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @property
    def total(self) -> int:
        return self.socket + self.status


@dataclass(frozen=True)
class Latency:
    """Request latency in milliseconds."""

    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


@dataclass(frozen=True)
class WrkResult:
    duration_s: float
    requests: int
    bytes: int
    errors: Errors
    latency: Latency

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True)
class WrkRun:
    result: WrkResult
    cpu_s: float
    """CPU seconds (user + system) wrk itself used."""


def find_wrk() -> str | None:
    return shutil.which("wrk")


def parse_output(stdout: str) -> WrkResult:
    """Extract the result from wrk's stdout (the line ``post.lua``'s ``done()`` printed)."""
    match = re.search(r"^" + re.escape(RESULT_MARKER) + r"(\{.*\})\s*$", stdout, re.MULTILINE)
    if match is None:
        raise WrkError(f"no {RESULT_MARKER.strip()} line in wrk output:\n{stdout[-2000:]}")
    try:
        raw = json.loads(match.group(1))
        err = raw["errors"]
        lat = raw["latency_us"]
        return WrkResult(
            duration_s=raw["duration_us"] / 1e6,
            requests=int(raw["requests"]),
            bytes=int(raw["bytes"]),
            errors=Errors(
                connect=int(err["connect"]),
                read=int(err["read"]),
                write=int(err["write"]),
                timeout=int(err["timeout"]),
                status=int(err["status"]),
            ),
            latency=Latency(
                mean=lat["mean"] / 1000,
                p50=lat["p50"] / 1000,
                p90=lat["p90"] / 1000,
                p99=lat["p99"] / 1000,
                p999=lat["p999"] / 1000,
                max=lat["max"] / 1000,
            ),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise WrkError(f"malformed wrk result line: {match.group(0)!r}") from exc


def command(
    wrk: str,
    url: str,
    path: str,
    bodies_file: Path,
    *,
    connections: int,
    threads: int,
    duration_s: float,
    timeout_s: float,
    script: Path = LUA_SCRIPT,
) -> list[str]:
    """The wrk command line; ``url`` is the server base (``http://host:port``)."""
    return [
        wrk,
        f"--connections={connections}",
        f"--threads={min(threads, connections)}",
        f"--duration={max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        f"--script={script}",
        url + path,
        "--",
        str(bodies_file),
        path,
    ]


def run(
    wrk: str,
    url: str,
    path: str,
    bodies_file: Path,
    *,
    connections: int,
    threads: int,
    duration_s: float,
    timeout_s: float,
    script: Path = LUA_SCRIPT,
) -> WrkRun:
    """Run wrk once and return its parsed result and its own CPU time."""
    cmd = command(
        wrk,
        url,
        path,
        bodies_file,
        connections=connections,
        threads=threads,
        duration_s=duration_s,
        timeout_s=timeout_s,
        script=script,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish: {' '.join(cmd)}") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkRun(result=parse_output(proc.stdout), cpu_s=cpu_s)

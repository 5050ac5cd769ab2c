"""Start the servers under test on free loopback ports, wait until ready, stop them cleanly.

Each server runs in its own process group so that its CPU time (including any worker
processes) can be measured and any process it leaves behind on shutdown can be found.
"""

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY_PATH = "/health/ready"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class ServerError(Exception):
    """A server did not start, did not become ready, or did not stop."""


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server; ``{port}`` in argv or env values is replaced at start."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_path: str = READY_PATH
    """Answers 200 once the server can serve (another server's readiness endpoint for peers)."""


def service_spec(
    store: Path,
    log_level: str = "warning",
    *,
    name: str = "service",
    runtime: str = "auto",
    extra_env: dict[str, str] | None = None,
) -> ServerSpec:
    """``python -m serving``, configured through its ``SERVEWELL_*`` settings.

    ``runtime`` is ``SERVEWELL_RUNTIME``, set explicitly so that an inherited value cannot
    change what a server measures: ``auto`` (ONNX Runtime where training verified parity) or
    ``sklearn``. The service has no backlog setting; uvicorn's default (2048) is enough for
    c=1000, and the baselines get the same number through ``--backlog``.
    """
    return ServerSpec(
        name=name,
        argv=[sys.executable, "-m", "serving"],
        env={
            "SERVEWELL_STORE": str(store),
            "SERVEWELL_HOST": HOST,
            "SERVEWELL_PORT": "{port}",
            "SERVEWELL_LOG_LEVEL": log_level,
            "SERVEWELL_RUNTIME": runtime,
            # One hash seed for every service server: two of them compared in a pair then
            # differ in their settings only (with random seeds, identical servers measured up
            # to 3 % apart in CPU per request).
            "PYTHONHASHSEED": "0",
            **(extra_env or {}),
        },
    )


def baseline_spec(kind: str, store: Path, models: list[str], backlog: int) -> ServerSpec:
    """One uvicorn process serving ``bench.baselines:<kind>_app``, with the service's settings."""
    return ServerSpec(
        name=kind,
        argv=[
            sys.executable,
            "-m",
            "uvicorn",
            f"bench.baselines:{kind}_app",
            "--factory",
            f"--host={HOST}",
            "--port={port}",
            f"--backlog={backlog}",
            "--no-access-log",
            "--log-level=warning",
            "--loop=auto",  # uvloop when installed
            "--http=auto",  # httptools when installed
        ],
        env={
            "SERVEWELL_STORE": str(store),
            "BENCH_MODELS": ",".join(models),
            "PYTHONPATH": str(ROOT),
        },
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (inherited by servers and wrk); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@dataclass
class RunningServer:
    spec: ServerSpec
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    leftovers: list[int] = field(default_factory=list)
    """Processes of this server's group still alive after the server exited (killed then)."""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process in the server's process group."""
        return sum(_cpu_seconds(pid) for pid in _group_members(self.process.pid))

    def main_cpu_seconds(self) -> float:
        """User + system CPU time of the server's main process (every thread of it)."""
        return _cpu_seconds(self.process.pid)

    def main_thread_cpu_seconds(self) -> float:
        """User + system CPU time of the main process's main thread (the event loop)."""
        return _cpu_seconds(self.process.pid, self.process.pid)

    def members(self) -> list[int]:
        """Live processes of the server's group (the main process and its workers)."""
        return _group_members(self.process.pid)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGINT (as Ctrl-C would), then SIGTERM, then SIGKILL the group; reap everything."""
        proc = self.process
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0)):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait_s)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5.0)
        # multiprocessing's resource tracker exits a moment after its parent: give the group
        # 2 s to empty by itself. Workers that outlive that would skew the next scenario and
        # leak: kill them.
        deadline = time.monotonic() + 2.0
        while _group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.leftovers = _group_members(proc.pid)
        for pid in self.leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def host_busy_cpu_seconds() -> float:
    """CPU seconds all processes on this machine have used since boot (not idle, not steal)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / _CLK_TCK


def _proc_stat(pid: int, task: int | None = None) -> list[str] | None:
    """Fields of /proc/<pid>/stat (or of one thread's, ``task``) after the command name."""
    where = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    try:
        raw = Path(where).read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw.rsplit(")", 1)[1].split()


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            # Zombies (state Z) are gone already; only their parent has to reap them.
            if stat is not None and int(stat[2]) == pgid and stat[0] != "Z":
                members.append(int(entry.name))
    return members


def _cpu_seconds(pid: int, task: int | None = None) -> float:
    stat = _proc_stat(pid, task)
    if stat is None:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / _CLK_TCK


def is_ready(url: str, path: str = READY_PATH) -> bool:
    """Whether ``GET <path>`` (``/health/ready`` by default) answers 200."""
    try:
        with urllib.request.urlopen(url + path, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not is_ready(server.url, server.spec.ready_path):
        if server.process.poll() is not None:
            raise ServerError(
                f"{server.spec.name} exited with {server.process.returncode} before it was "
                f"ready; log {server.log_path}:\n{server.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise ServerError(
                f"{server.spec.name} not ready after {timeout_s:.0f} s; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        time.sleep(0.1)


def start(spec: ServerSpec, log_dir: Path, ready_timeout_s: float) -> RunningServer:
    """Start ``spec`` on a free port and return once ``GET /health/ready`` answers 200."""
    port = free_port()
    argv = [arg.replace("{port}", str(port)) for arg in spec.argv]
    env = {**os.environ, **{k: v.replace("{port}", str(port)) for k, v in spec.env.items()}}
    log_path = log_dir / f"{spec.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(spec=spec, port=port, process=process, log_path=log_path)
    try:
        _wait_ready(server, ready_timeout_s)
    except BaseException:  # also Ctrl-C while waiting: never leave the server behind
        server.stop()
        raise
    return server


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the servers are stopped on that exit path too."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

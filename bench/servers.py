"""Start the servers under test as a user would, on free loopback ports; measure and stop them.

The service is ``python -m serving`` configured by ``SERVEWELL_*`` variables (from a git
worktree of another commit for ``--baseline-ref``); the baselines are uvicorn apps; MLServer
runs from its own virtualenv; Ray Serve through ``python -m serving.ray_local``. CPU time and
leftovers are counted over each server's process tree, because Ray's actors leave the
launcher's process group.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.scenarios import Server
from serving.store import MODEL_FILE, ModelStore

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
_TICK = os.sysconf("SC_CLK_TCK")


class ServerError(Exception):
    """A server did not start or did not become ready."""


@dataclass(frozen=True)
class Context:
    """What starting any server needs."""

    store: Path
    models: list[str]
    workdir: Path
    ready_timeout_s: float = 120.0
    peers_venv: Path = ROOT / ".venv-peers"
    ray_config: Path = ROOT / "serving" / "ray-serve.yaml"
    source: dict[str, Path] = field(default_factory=dict)
    """Git commit -> worktree of it (``checkout``)."""


def _stat(pid: int, tid: int | None = None) -> list[str] | None:
    """Fields of /proc/<pid>[/task/<tid>]/stat after the command name."""
    where = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        return Path(where).read_text(errors="replace").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_s(pid: int, tid: int | None = None) -> float:
    stat = _stat(pid, tid)
    return 0.0 if stat is None else (int(stat[11]) + int(stat[12])) / _TICK


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, frontier = [], [root]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found


def host_busy_s() -> float:
    """CPU seconds every process on this machine has used since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / _TICK


def _set_affinity(pid: int, cpus: set[int]) -> None:
    for tid in os.listdir(f"/proc/{pid}/task") if Path(f"/proc/{pid}").exists() else []:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


@dataclass
class Running:
    name: str
    process: "subprocess.Popen[bytes]"
    port: int
    log: Path
    seen: set[int] = field(default_factory=set)
    leftovers: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def tree(self) -> list[int]:
        pids = [self.process.pid, *_descendants(self.process.pid)]
        self.seen.update(pids[1:])
        return pids

    def cpu_s(self) -> float:
        """User + system CPU of every process of the server (workers included)."""
        return sum(_cpu_s(pid) for pid in self.tree())

    def main_cpu_s(self) -> float:
        """CPU of the main process, every thread (the event loop and the log writer)."""
        return _cpu_s(self.process.pid)

    def pin(self, loop_cpu: int, others: set[int]) -> None:
        """The event-loop thread (the main thread) on ``loop_cpu``; everything else on
        ``others``, where an unpinned deployment's scheduler could put it too."""
        for pid in self.tree():
            _set_affinity(pid, others)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(self.process.pid, {loop_cpu})  # only the main thread

    def unpin(self) -> None:
        for pid in self.tree():
            _set_affinity(pid, os.sched_getaffinity(0))

    def wait_idle(self, limit_s: float = 60.0) -> float:
        """Wait until the server uses < 10 % of a core (at most ``limit_s``): one that fell
        behind goes on answering requests whose clients are gone, and that backlog must not
        be charged to the next run. Returns the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < limit_s:
            before = self.cpu_s()
            time.sleep(0.25)
            if self.cpu_s() - before < 0.025:
                break
        return time.monotonic() - start

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        """SIGINT (as Ctrl-C), then SIGTERM, then SIGKILL; what of its tree outlives that is a
        leftover, reported and killed."""
        self.tree()
        for sig, wait_s in ((signal.SIGINT, 30.0), (signal.SIGTERM, 5.0)):
            if self.process.poll() is None:
                self.process.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(wait_s)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5.0)
        deadline = time.monotonic() + 5.0  # multiprocessing's helpers exit a moment later
        while (
            alive := [p for p in self.seen if _stat(p) is not None]
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.leftovers = sorted(alive)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _mlserver_repository(ctx: Context) -> Path:
    """A model repository pointing at the store's own joblib files (hash-checked first),
    adaptive batching on, two inference workers (twice MLServer's default single-row
    throughput on 2 cores), no access log and no metrics server, as servewell runs."""
    root = ctx.workdir / "mlserver"
    scratch = root / ".scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "host": HOST,
        "parallel_workers": 2,
        "metrics_endpoint": None,
        "metrics_dir": str(scratch / "metrics"),
        "environments_dir": str(scratch / "envs"),
    }
    (root / "settings.json").write_text(json.dumps(settings))
    store = ModelStore(ctx.store)
    for name in ctx.models:
        version = store.production(name) or store.versions(name)[-1]
        manifest = store.verify(name, version)
        (root / name).mkdir(exist_ok=True)
        (root / name / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "mlserver_sklearn.SKLearnModel",
                    "max_batch_size": 64,
                    "max_batch_time": 0.002,
                    "parameters": {
                        "uri": str(store.version_path(name, version) / MODEL_FILE),
                        "version": str(manifest.version),
                    },
                }
            )
        )
    return root


def _command(server: Server, port: int, ctx: Context) -> tuple[list[str], dict[str, str], Path]:
    """argv, environment and working directory of ``server``."""
    py, store = sys.executable, str(ctx.store)
    if server.kind == "mlserver":
        venv = ctx.peers_venv
        argv = [str(venv / "bin" / "mlserver"), "start", str(_mlserver_repository(ctx))]
        env = {
            "MLSERVER_HTTP_PORT": str(port),
            "MLSERVER_GRPC_PORT": str(free_port()),
            "PYTHONPATH": "",
            "VIRTUAL_ENV": str(venv),
        }
        return argv, env, ctx.workdir
    if server.kind in ("bare", "naive"):
        argv = [
            py,
            "-m",
            "uvicorn",
            f"bench.baselines:{server.kind}_app",
            "--factory",
            f"--host={HOST}",
            f"--port={port}",
            "--backlog=2048",
            "--no-access-log",
            "--log-level=warning",
        ]
        env = {"SERVEWELL_STORE": store, "BENCH_MODELS": ",".join(ctx.models)}
        return argv, {**env, "PYTHONPATH": str(ROOT)}, ROOT
    source = ROOT if server.ref is None else ctx.source[server.ref]
    env = {"PYTHONPATH": str(source), "SERVEWELL_STORE": store, **server.env}
    if server.kind == "ray":
        temp = tempfile.mkdtemp(prefix="ray-b-", dir="/tmp")  # short unix socket paths
        argv = [
            py,
            "-m",
            "serving.ray_local",
            "--config",
            str(ctx.ray_config),
            "--store",
            store,
            "--port",
            str(port),
            "--num-cpus",
            str(os.cpu_count() or 1),
            "--temp-dir",
            temp,
        ]
        return argv, {**env, "RAY_USAGE_STATS_ENABLED": "0"}, source
    # One hash seed for every service: with random seeds, identical servers measured up to
    # 3 % apart in CPU per request.
    env |= {"SERVEWELL_HOST": HOST, "SERVEWELL_PORT": str(port), "PYTHONHASHSEED": "0"}
    return [py, "-m", "serving"], env, source


def start(server: Server, ctx: Context, label: str | None = None) -> Running:
    """Start ``server`` and return once its readiness endpoint answers 200."""
    port = free_port()
    argv, env, cwd = _command(server, port, ctx)
    log = ctx.workdir / f"{label or server.name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Running(label or server.name, process, port, log)
    ready = running.url + ("/v2/health/ready" if server.kind == "mlserver" else "/health/ready")
    deadline = time.monotonic() + ctx.ready_timeout_s * (3 if server.kind == "ray" else 1)
    try:
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=2) as resp:
                if resp.status == 200:
                    return running
            if process.poll() is not None or time.monotonic() > deadline:
                why = "exited" if process.poll() is not None else "not ready in time"
                raise ServerError(f"{running.name} {why}; log {log}:\n{running.log_tail()}")
            running.tree()
            time.sleep(0.1)
    except BaseException:  # Ctrl-C too: never leave a server behind
        running.stop()
        raise


@contextlib.contextmanager
def checkout(ref: str, workdir: Path) -> Iterator[Path]:
    """A git worktree of commit ``ref`` (removed afterwards), to run its service."""
    path = workdir / f"source-{ref.replace('/', '_')}"
    git = ["git", "-C", str(ROOT)]
    subprocess.run(
        [*git, "worktree", "add", "--detach", str(path), ref], check=True, capture_output=True
    )
    try:
        yield path
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False)

"""Start the servers under test as a user would, on free loopback ports; measure and stop them.
CPU time and leftovers count each server's process tree: Ray's actors leave its process group."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.grpc_load import METHOD
from bench.scenarios import Server
from serving.store import MODEL_FILE, ModelStore, TrafficMode, TrafficPolicy

ROOT = Path(__file__).resolve().parent.parent
RAY_CONFIG = ROOT / "serving" / "ray" / "ray-serve.yaml"
HOST = "127.0.0.1"
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class ServerError(Exception):
    """A server did not start or did not become ready."""


@dataclass(frozen=True)
class Context:
    store: Path
    models: list[str]
    workdir: Path
    peers_venv: Path
    baseline: Path
    """Where ``service@base`` runs from: a worktree of ``--baseline-ref`` (:func:`checkout`)."""


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(errors="replace").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_s(pid: int) -> float:
    stat = _stat(pid)
    return 0.0 if stat is None else (int(stat[11]) + int(stat[12])) / _TICK


def _rss_pages(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def host_busy_s() -> float:
    """CPU seconds every process on this machine has used since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split(maxsplit=8)[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK  # all but idle and iowait


@dataclass
class Running:
    name: str
    process: "subprocess.Popen[bytes]"
    url: str
    log: Path
    grpc: str | None = None
    """``grpc://host:port`` of a service's gRPC server."""
    seen: set[int] = field(default_factory=set)
    leftovers: list[int] = field(default_factory=list)

    def address(self, path: str) -> str:
        """Where a load of ``path`` goes: the gRPC server for ``ModelInfer``, else HTTP."""
        if path != METHOD:
            return self.url + path
        if self.grpc is None:
            raise ServerError(f"{self.name} serves no gRPC")
        return self.grpc

    def tree(self) -> list[int]:
        """The main process and its live descendants (remembered, to find leftovers)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
                children.setdefault(int(stat[1]), []).append(int(entry.name))
        found = [self.process.pid]
        for pid in found:  # grows while walked: breadth first
            found += children.get(pid, [])
        self.seen.update(found[1:])
        return found

    def cpu_s(self) -> float:
        """User + system CPU of every process of the server (workers included)."""
        return sum(_cpu_s(pid) for pid in self.tree())

    def rss_mb(self) -> float:
        """Resident memory of every process of the server (workers included), in MiB."""
        return sum(_rss_pages(pid) for pid in self.tree()) * _PAGE / 2**20

    def main_cpu_s(self) -> float:
        """CPU of the main process, every thread (the event loop, the access log's writer)."""
        return _cpu_s(self.process.pid)

    def pin(self, loop_cpu: int | None) -> None:
        """The event loop (the main thread) alone on ``loop_cpu``, everything else on the other
        CPUs, where an unpinned deployment's scheduler could put it too; None: unpin."""
        others = os.sched_getaffinity(0) - {loop_cpu}
        for task in (t for pid in self.tree() for t in Path(f"/proc/{pid}/task").glob("*")):
            with contextlib.suppress(OSError):  # affinity is per thread
                os.sched_setaffinity(int(task.name), others)
        if loop_cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.process.pid, {loop_cpu})  # the main thread's id is pid

    def runtimes(self, models: list[str]) -> dict[str, str | None]:
        """The runtime ``GET /models/{name}`` reports per model (onnx or sklearn)."""
        out = {}
        for m in models:
            try:
                with urllib.request.urlopen(f"{self.url}/models/{m}", timeout=10) as resp:
                    out[m] = json.loads(resp.read()).get("runtime")
            except (OSError, ValueError):
                out[m] = None
        return out

    def metrics(self) -> dict[str, float]:
        """The unlabelled samples of ``GET /metrics``; empty when not answered (e.g. shed)."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
                samples = [line.split() for line in resp.read().decode().splitlines()]
        except OSError:
            return {}
        return {s[0]: float(s[1]) for s in samples if len(s) == 2 and s[0].isidentifier()}

    def wait_idle(self, limit_s: float = 60.0) -> None:
        """Wait until the server uses < 10 % of a core (at most ``limit_s``): one that fell
        behind goes on answering requests whose clients are gone, and that must not be charged
        to the next run."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            before = self.cpu_s()
            time.sleep(0.25)
            if self.cpu_s() - before < 0.025:
                return

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGINT (as Ctrl-C), then SIGTERM, then SIGKILL; what of its tree outlives that is a
        leftover: reported, and killed."""
        self.tree()
        for sig, wait_s in ((signal.SIGINT, 30.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.process.poll() is None:
                self.process.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(wait_s)
        deadline = time.monotonic() + 5.0  # multiprocessing's helpers exit a moment later
        while (alive := [p for p in self.seen if _stat(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.leftovers = sorted(alive)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def served_version(store: ModelStore, name: str) -> int:
    return store.production(name) or store.versions(name)[-1]  # as the service picks it


def _mlserver_repository(ctx: Context) -> Path:
    """A model repository on the store's own joblib files (hash-checked first): adaptive
    batching on, two inference workers (twice the single-row throughput of MLServer's default
    one on 2 cores), no access log and no metrics server."""
    root, store = ctx.workdir / "mlserver", ModelStore(ctx.store)
    scratch = root / ".scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    settings = {"debug": False, "host": HOST, "parallel_workers": 2, "metrics_endpoint": None}
    settings |= {"metrics_dir": str(scratch / "m"), "environments_dir": str(scratch / "e")}
    (root / "settings.json").write_text(json.dumps(settings))
    for name in ctx.models:
        manifest = store.verify(name, served_version(store, name))
        uri = store.version_path(name, manifest.version) / MODEL_FILE
        model: dict[str, Any] = {"name": name, "implementation": "mlserver_sklearn.SKLearnModel"}
        model |= {"max_batch_size": 64, "max_batch_time": 0.002}
        model["parameters"] = {"uri": str(uri), "version": str(manifest.version)}
        (root / name).mkdir(exist_ok=True)
        (root / name / "model-settings.json").write_text(json.dumps(model))
    return root


def _copy(source: ModelStore, name: str, store: ModelStore, as_name: str) -> int:
    """Publish ``name``'s served version in ``store`` as the next version of ``as_name``."""
    manifest = source.verify(name, served_version(source, name))
    fields = manifest.model_dump(mode="json", exclude={"name", "version", "files"})
    with store.create_version(as_name, fields) as staged:
        for file in manifest.files:
            (staged.path / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.version_path(name, manifest.version) / file, staged.path / file)
    assert staged.version is not None
    return staged.version


def _many_store(ctx: Context, many: int) -> Path:
    """A store of the served models and copies of iris, ``many`` models in all."""
    root = ctx.workdir / f"store-{many}"
    if root.exists():
        return root
    source, store = ModelStore(ctx.store), ModelStore(root)
    names = [*ctx.models, *(f"iris_{i:03d}" for i in range(many - len(ctx.models)))]
    for name in names:
        store.promote(name, _copy(source, name if name in ctx.models else "iris", store, name))
    return root


def _shadow_store(ctx: Context) -> Path:
    """A store of each model's served version and a copy of it published next, in shadow at
    100 %: every request is predicted twice, by the same model."""
    root = ctx.workdir / "shadow-store"
    if root.exists():
        return root
    source, store = ModelStore(ctx.store), ModelStore(root)
    for name in ctx.models:
        version = _copy(source, name, store, name)
        store.promote(name, version)
        shadow = _copy(source, name, store, name)
        policy = TrafficPolicy(TrafficMode.SHADOW, version, ((version, 1.0),), time.time())
        store.set_traffic(name, replace(policy, shadow=shadow))
    return root


def _base_store(ctx: Context) -> Path:
    """The shipped models trained by the ``--baseline-ref`` commit's own code, once per run:
    an older reader may refuse what this commit writes (a manifest field it does not know)."""
    root = ctx.workdir / "base-store"
    if not root.exists():
        env = {**os.environ, "PYTHONPATH": str(ctx.baseline), "SERVEWELL_STORE": str(root)}
        train = [sys.executable, "-m", "training", "ensure-default"]
        subprocess.run(train, cwd=ctx.baseline, env=env, check=True, capture_output=True)
    return root


def _command(
    server: Server, port: int, ctx: Context, grpc_port: int, one_process: bool
) -> tuple[list[str], dict[str, str], Path]:
    """argv, environment and working directory of ``server`` (``one_process``: a service
    with one server process, whatever the cores)."""
    store = str(_shadow_store(ctx) if server.shadow else ctx.store)
    py, store = sys.executable, str(_many_store(ctx, server.many)) if server.many else store
    if server.kind == "mlserver":
        argv = [str(ctx.peers_venv / "bin" / "mlserver"), "start", str(_mlserver_repository(ctx))]
        env = {"MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": str(free_port())}
        return argv, {**env, "PYTHONPATH": "", "VIRTUAL_ENV": str(ctx.peers_venv)}, ctx.workdir
    if server.kind in ("bare", "naive", "hello"):
        argv = [py, "-m", "uvicorn", f"bench.baselines:{server.kind}_app", "--factory"]
        argv += [f"--host={HOST}", f"--port={port}", "--backlog=2048", "--no-access-log"]
        env = {"SERVEWELL_STORE": store, "BENCH_MODELS": ",".join(ctx.models)}
        return [*argv, "--log-level=warning"], {**env, "PYTHONPATH": str(ROOT)}, ROOT
    source = ctx.baseline if server.baseline else ROOT
    store = str(_base_store(ctx)) if server.baseline else store
    own = {k: v.replace("{run}", f"{ctx.workdir}/{port}") for k, v in server.env.items()}
    env = {"PYTHONPATH": str(source), "SERVEWELL_STORE": store, **own}
    if server.kind == "ray":
        temp = tempfile.mkdtemp(prefix="ray-b-", dir="/tmp")  # short unix socket paths
        argv = [py, "-m", "serving.ray.local", "--config", str(RAY_CONFIG), "--store", store]
        argv += ["--port", str(port), "--num-cpus", str(os.cpu_count()), "--temp-dir", temp]
        return argv, {**env, "RAY_USAGE_STATS_ENABLED": "0"}, source
    # One hash seed for every service: with random ones, identical servers measured up to 3 %
    # apart in CPU per request.
    env |= {"SERVEWELL_HOST": HOST, "SERVEWELL_PORT": str(port), "PYTHONHASHSEED": "0"}
    env["SERVEWELL_GRPC_PORT"] = str(grpc_port)  # on, as users get it
    if one_process:
        env["SERVEWELL_WORKERS"] = "1"
    return [py, "-m", "serving"], env, source


def start(server: Server, ctx: Context, label: str | None = None, paired: bool = False) -> Running:
    """Start ``server`` and return once its readiness endpoint answers (``paired``: one server
    process, in the bench's own session).

    Every server has a process group of its own, so a Ctrl-C at the terminal reaches only the
    bench, which stops them in order. A server runs in a session of its own, as a service
    started by its own manager is scheduled apart from its clients (Linux's autogroup, like a
    cgroup, shares the CPU between groups first), except the servers of a pair: two groups
    pinned to one core did not share it evenly (Linux 6.18), and a service beside a busy
    server in another session waited 1.85 s of every 2 runnable, serving 178 req/s against
    8 768. In the bench's session the two event loops compete as threads."""
    port, grpc_port = free_port(), free_port()
    argv, env, cwd = _command(server, port, ctx, grpc_port, paired)
    log = ctx.workdir / f"{label or server.name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=not paired,
            process_group=0 if paired else None,
        )  # fmt: skip
    grpc = f"grpc://{HOST}:{grpc_port}" if env.get("SERVEWELL_GRPC_PORT") else None
    running = Running(label or server.name, process, f"http://{HOST}:{port}", log, grpc)
    ready = running.url + ("/v2/health/ready" if server.kind == "mlserver" else "/health/ready")
    deadline = time.monotonic() + (300 if server.kind == "ray" else 120)  # Ray takes ~1 min
    try:
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=2):
                return running  # an error status raises: urllib's HTTPError is an OSError
            if process.poll() is not None or time.monotonic() > deadline:
                why = "exited" if process.poll() is not None else "is not ready in time"
                raise ServerError(f"{running.name} {why}; log {log}:\n{running.log_tail()}")
            running.tree()
            time.sleep(0.1)
    except BaseException:  # Ctrl-C too: never leave a server behind
        running.stop()
        raise


def git(*args: str, check: bool = False) -> str:
    """The stripped output of ``git args`` in this repository ("" on failure unless ``check``)."""
    argv = ["git", "-C", str(ROOT), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout.strip()


@contextlib.contextmanager
def checkout(commit: str, workdir: Path) -> Iterator[Path]:
    """A git worktree of ``commit``, removed afterwards, to run its service."""
    path = workdir / f"source-{commit}"
    git("worktree", "add", "--detach", str(path), commit, check=True)
    try:
        yield path
    finally:
        git("worktree", "remove", "--force", str(path))

"""The Ray scenario: the service as Ray Serve replicas behind Ray's HTTP proxy, on this box.

``python -m serving.ray_local`` with a Serve config (the shipped ``serving/ray-serve.yaml`` by
default: two replicas) runs a private local Ray instance on loopback. Its single-row scenarios
sit next to the single-box service's at the same loads, so the report can state the
per-request overhead of Ray's proxy hop (proxy -> replica) as a latency difference and a
throughput ratio measured in the same run. Needs the ``ray`` extra; without it the scenario is
left out with a note.

Ray's actors are put in their own process groups, so this server's CPU time and leftovers are
counted over its process tree (every descendant of the launcher), not its process group.
"""

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import servers
from bench.scenarios import RAY, SERVICE, Outcome

DEFAULT_CONFIG = servers.ROOT / "serving" / "ray-serve.yaml"
INSTALL_HINT = "ray is not installed: `make bench-ray` installs the ray extra and runs it"


def available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _ps_tree(root: int) -> list[int]:
    """Live descendants of ``root`` (zombies excluded), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = servers._proc_stat(int(entry.name))
            if stat is not None and stat[0] != "Z":
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    found: list[int] = []
    frontier = [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            found.append(child)
            frontier.append(child)
    return found


class RayServer(servers.RunningServer):
    """The launcher and every process of its Ray instance."""

    tree: list[int]
    """Descendants seen while running (Ray's actors leave the launcher's process group)."""
    temp_dir: str | None = None
    """Ray's session dir of this instance, removed after the stop."""

    def cpu_seconds(self) -> float:
        pids = [self.process.pid, *_ps_tree(self.process.pid)]
        self.tree = sorted({*getattr(self, "tree", []), *pids[1:]})
        return sum(servers._cpu_seconds(pid) for pid in pids)

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGINT (the launcher shuts Serve and Ray down), then as for any server; whatever of
        its process tree is still alive afterwards is a leftover, and is killed."""
        seen = set(getattr(self, "tree", [])) | set(_ps_tree(self.process.pid))
        super().stop(grace_s)
        deadline = time.monotonic() + 10.0
        alive = [pid for pid in seen if servers._proc_stat(pid) is not None]
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [pid for pid in alive if servers._proc_stat(pid) is not None]
        self.leftovers = sorted({*self.leftovers, *alive})
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def start(
    store: Path, log_dir: Path, ready_timeout_s: float, config: Path = DEFAULT_CONFIG
) -> RayServer:
    """The Ray deployment on a free loopback port, returned once ``/health/ready`` answers 200
    through the proxy (every replica of the config started before the app is ready)."""
    port = servers.free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-b-", dir="/tmp")  # short unix socket paths
    argv = [sys.executable, "-m", "serving.ray_local", "--config", str(config)]
    argv += ["--store", str(store), "--port", str(port), "--num-cpus", str(os.cpu_count() or 1)]
    argv += ["--temp-dir", temp_dir]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "SERVEWELL_LOG_LEVEL": "warning"}
    spec = servers.ServerSpec(name=RAY, argv=argv, env={})
    log_path = log_dir / f"{RAY}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=servers.ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RayServer(spec=spec, port=port, process=process, log_path=log_path)
    server.temp_dir = temp_dir
    try:
        servers._wait_ready(server, max(ready_timeout_s, 300.0))  # Ray takes ~1 min here
    except BaseException:
        server.stop()
        raise
    return server


def overhead_notes(outcomes: Sequence[Outcome]) -> list[str]:
    """Per model and load: Ray's p50 latency minus the service's (the proxy hop's cost per
    request) and its throughput as a share of the service's, both from this run."""
    found = {
        (o.scenario.server, o.scenario.model, o.scenario.connections): o
        for o in outcomes
        if not o.scenario.is_rows and o.result is not None
    }
    notes = []
    for (server, model, c), ray in sorted(found.items()):
        service = found.get((SERVICE, model, c))
        if server != RAY or service is None or ray.result is None or service.result is None:
            continue
        extra = ray.result.latency.p50 - service.result.latency.p50
        share = ray.result.requests_per_s / service.result.requests_per_s
        notes.append(
            f"Ray proxy overhead, {model} c={c}: p50 {ray.result.latency.p50:.2f} ms vs "
            f"{service.result.latency.p50:.2f} ms single-box (+{extra:.2f} ms per request); "
            f"{ray.result.requests_per_s:,.0f} vs {service.result.requests_per_s:,.0f} req/s "
            f"({share:.2f}x)."
        )
    return notes

"""``python -m serving`` as a process of its own, started the way a user starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serving.store import ModelStore

ROOT = Path(__file__).resolve().parents[2]


def python_prints(code: str, timeout: float = 120) -> str:
    """What a fresh interpreter running ``code`` (from the project's root) prints; it must
    exit cleanly."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def descendants(pid: int) -> set[int]:
    """Every live descendant of pid (from /proc), excluding zombies."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_serving(
    trained_store: ModelStore, loop: str = "uvloop", *args: str, **settings: str
) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {
        **os.environ,
        "SERVEWELL_STORE": str(trained_store.root),
        "SERVEWELL_PORT": str(port),
        "SERVEWELL_WORKERS": "1",
        "SERVEWELL_POOL_SIZE": "2",
        "SERVEWELL_LOG_LEVEL": "warning",
        "SERVEWELL_LOOP": loop,
        "SERVEWELL_GRPC_PORT": "0",
        **{f"SERVEWELL_{name.upper()}": value for name, value in settings.items()},
    }
    for name in [name for name, value in env.items() if name.startswith("SERVEWELL_")]:
        if env[name] == "":  # given empty: the setting's default
            del env[name]
    if "--port" in args:
        port = int(args[args.index("--port") + 1])
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    # Each server process listens on its own socket and answers for itself: ready is 20 new
    # connections in a row answered 200, which the kernel spreads over the processes.
    in_a_row = 0
    while True:
        if process.poll() is not None:
            raise AssertionError(process.communicate()[0])
        try:
            ready = httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            ready = False
        in_a_row = in_a_row + 1 if ready else 0
        if in_a_row == 20:
            return process, url
        if ready:
            continue
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the service did not become ready")
        time.sleep(0.2)

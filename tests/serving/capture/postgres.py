"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a fresh cluster in a
temporary directory, listening on a free loopback port, stopped at the end.

initdb refuses to run as root, so under root the cluster belongs to the ``postgres`` system
user the package creates, and its commands run through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    return Path(folders[-1]) if folders and Path(folders[-1], "initdb").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Start a server; yield its SQLAlchemy URL (database ``postgres``, user ``postgres``)."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_user: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory(prefix="servewell-pg-") as tmp:
        data, sockets = Path(tmp, "data"), Path(tmp, "sockets")
        sockets.mkdir()
        if as_user:
            os.chmod(tmp, 0o755)
            shutil.chown(sockets, "postgres")
            data.mkdir()
            shutil.chown(data, "postgres")
        env = {**os.environ, "LC_ALL": "C"}
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off"
        pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
        subprocess.run(
            [*pg_ctl, "-o", options, "-l", str(sockets / "log"), "start"],
            check=True,
            capture_output=True,
            env=env,
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, env=env)

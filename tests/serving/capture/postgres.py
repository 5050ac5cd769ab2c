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


class PostgresServer:
    """One cluster in a temporary directory; :meth:`stop` and :meth:`start` again keep its
    data and port (for tests of a database that goes away and comes back)."""

    def __init__(self, tmp: str) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.as_user: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.data, self.sockets = Path(tmp, "data"), Path(tmp, "sockets")
        self.sockets.mkdir()
        if self.as_user:
            os.chmod(tmp, 0o755)
            shutil.chown(self.sockets, "postgres")
            self.data.mkdir()
            shutil.chown(self.data, "postgres")
        self.env = {**os.environ, "LC_ALL": "C"}
        initdb = [str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]
        self._run([*initdb, "-E", "UTF8"])
        self.port = _free_port()
        self.pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60"]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, command: list[str], check: bool = True) -> None:
        subprocess.run([*self.as_user, *command], check=check, capture_output=True, env=self.env)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off"
        self._run([*self.pg_ctl, "-o", options, "-l", str(self.sockets / "log"), "start"])

    def stop(self) -> None:
        self._run([*self.pg_ctl, "-m", "immediate", "stop"], check=False)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server; yield it (``.url``: its SQLAlchemy URL, database and user ``postgres``)."""
    with tempfile.TemporaryDirectory(prefix="servewell-pg-") as tmp:
        server = PostgresServer(tmp)
        server.start()
        try:
            yield server
        finally:
            server.stop()

"""What the harness reads of a running server's processes."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.servers import Running

# A parent holding 40 MiB whose child holds 60 MiB, both resident until killed.
HOLD = "import sys; b = bytearray({mib} << 20); print('ready', flush=True); {rest}"
CHILD = HOLD.format(mib=60, rest="import time; time.sleep(60)")
PARENT = HOLD.format(
    mib=40,
    rest=(
        "import subprocess; c = subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
        "stdout=subprocess.PIPE); c.stdout.readline(); print('both', flush=True); c.wait()"
    ),
)


def test_memory_adds_up_the_server_and_its_workers(tmp_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE) as proc:
        running = Running("s", proc, "http://127.0.0.1:1", tmp_path / "log")
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            assert proc.stdout.readline() == b"both\n"
            assert len(running.tree()) == 2
            assert 100 <= running.rss_mb() < 100 + 2 * 40  # each interpreter adds its own
        finally:
            for pid in running.tree()[1:]:
                os.kill(pid, signal.SIGKILL)
            proc.kill()

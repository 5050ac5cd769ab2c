"""``python -m serving.ray.local``: a local Ray head on loopback serving the Serve config.

This process starts its own Ray instance (loopback, no dashboard, usage stats off, a bounded
number of CPUs, its own temp dir), deploys the Serve config file through Ray's ``serve run``,
and blocks. Ctrl-C or SIGTERM shuts Serve and that Ray instance down, with every process it
started; no other Ray instance on the machine is touched (unlike ``ray stop``).

The config's store path is made absolute here (``--store``, else ``$SERVEWELL_STORE``, else
the config's own value, resolved against the current directory), since the application is
built in a Ray process with another working directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

DEFAULT_CONFIG = Path(__file__).resolve().parent / "ray-serve.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving.ray.local", description=__doc__)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config YAML")
    parser.add_argument("--store", type=Path, help="model store (default: $SERVEWELL_STORE)")
    parser.add_argument("--port", type=int, help="HTTP port of Ray's proxy (default: config's)")
    parser.add_argument(
        "--num-cpus", type=int, default=os.cpu_count() or 1, help="CPUs Ray may use (all)"
    )
    parser.add_argument(
        "--temp-dir", type=Path, help="Ray's temp/session dir (default: a new one under /tmp)"
    )
    return parser.parse_args(argv)


def local_config(config: dict[str, Any], store: Path | None, port: int | None) -> dict[str, Any]:
    """The config with every store path absolute, the proxy on loopback and the given port."""
    http = config.setdefault("http_options", {})
    http["host"] = "127.0.0.1"
    if port is not None:
        http["port"] = port
    for app in config.get("applications", []):
        settings = app.setdefault("args", {}).setdefault("settings", {})
        chosen = store or os.environ.get("SERVEWELL_STORE") or settings.get("store", "models")
        settings["store"] = str(Path(chosen).expanduser().resolve())
    return config


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # serve run shuts Serve down on KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home
    import ray
    import yaml
    from ray.serve.scripts import run as serve_run

    config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    config = local_config(config, args.store, args.port)
    # Unix socket paths under the temp dir must stay short: a short private dir under /tmp.
    own_temp_dir = args.temp_dir is None
    temp_dir = args.temp_dir or Path(tempfile.mkdtemp(prefix="ray-sw-", dir="/tmp"))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="servewell-serve-") as file:
        yaml.safe_dump(config, file)
        file.flush()
        ray.init(
            num_cpus=args.num_cpus,
            include_dashboard=False,  # Ray still runs its headless API server, on loopback
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            _temp_dir=str(temp_dir),
            namespace="serve",
        )
        # After ray.init, which installs its own SIGTERM handler: SIGINT (even when inherited
        # as ignored, e.g. from a background job) and SIGTERM both take serve run's Ctrl-C path.
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        http = config["http_options"]
        print(
            f"servewell on Ray Serve: http://{http['host']}:{http.get('port', 8000)} "
            f"(Ray: {args.num_cpus} CPUs, temp dir {temp_dir}); Ctrl-C stops it",
            flush=True,
        )
        try:
            serve_run.main([file.name], standalone_mode=False)
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            # A second Ctrl-C must not cut the teardown short and leave Ray processes behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            from ray import serve

            # Both untyped in ray (and Any when it is not installed): called as Any.
            serve_shutdown: Any = serve.shutdown
            ray_shutdown: Any = ray.shutdown
            serve_shutdown()
            ray_shutdown()
            if own_temp_dir:
                shutil.rmtree(temp_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seldon MLServer as a peer: its model repository, its request bodies, its answers.

MLServer runs from its own virtualenv (``make bench-peers`` builds ``.venv-peers`` from
``bench/peers-requirements.txt``) and serves the very ``model.joblib`` files of the servewell
store through its scikit-learn runtime (``mlserver_sklearn.SKLearnModel``), with adaptive
batching on. Requests use the Open Inference Protocol (V2) REST endpoint
``POST /v2/models/<name>/infer``. Nothing here imports MLServer.
"""

import json
import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import HOST, ServerSpec, free_port
from bench.workload import Row
from serving.store import MODEL_FILE, FeatureKind, Manifest, ModelStore

IMPLEMENTATION = "mlserver_sklearn.SKLearnModel"
READY_PATH = "/v2/health/ready"
"""200 only once every model in the repository is loaded."""
PREDICT_OUTPUT = "predict"
"""The output SKLearnModel returns by default: ``predict()``, as servewell's default answer."""
ARRAY_INPUT = "input-0"


@dataclass(frozen=True)
class Config:
    """How MLServer is run: the knobs a user would set for this box."""

    parallel_workers: int = 2
    """Inference worker processes, one per core. MLServer's default is 1 (one process parses
    HTTP, one runs the models); on this 2-core box 2 workers gave MLServer about twice the
    single-row throughput of 1 in interleaved runs (bench/README.md), so the peer gets the
    better setting."""
    max_batch_size: int = 64
    """Adaptive batching: most requests merged into one ``predict`` call."""
    max_batch_time: float = 0.002
    """Adaptive batching: longest wait (seconds) for a batch to fill."""


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def model_settings(manifest: Manifest, model_uri: Path, config: Config) -> dict[str, Any]:
    """``model-settings.json`` of one model: the store's joblib file, batching on."""
    return {
        "name": manifest.name,
        "implementation": IMPLEMENTATION,
        "max_batch_size": config.max_batch_size,
        "max_batch_time": config.max_batch_time,
        "parameters": {"uri": str(model_uri), "version": str(manifest.version)},
    }


def server_settings(config: Config, scratch: Path) -> dict[str, Any]:
    """``settings.json``; ports come from the environment (``MLSERVER_HTTP_PORT``...).

    ``debug`` off (no access log per request, as servewell runs); no metrics server; the
    directories MLServer writes into are kept out of the working tree.
    """
    return {
        "debug": False,
        "host": HOST,
        "parallel_workers": config.parallel_workers,
        "metrics_endpoint": None,
        "metrics_dir": str(scratch / "metrics"),
        "environments_dir": str(scratch / "envs"),
        "load_models_at_startup": True,
    }


def write_repository(
    root: Path, store: ModelStore, versions: dict[str, int], config: Config
) -> Path:
    """A model repository under ``root`` pointing at the store's artifacts; returns ``root``."""
    scratch = root / ".scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(
        json.dumps(server_settings(config, scratch), indent=2), encoding="utf-8"
    )
    for name, version in versions.items():
        manifest = store.verify(name, version)  # the artifact's sha256 matches its manifest
        model_uri = store.version_path(name, version) / MODEL_FILE
        if not model_uri.is_file():
            raise FileNotFoundError(f"no joblib artifact for {name} v{version}: {model_uri}")
        model_dir = root / name
        model_dir.mkdir(exist_ok=True)
        (model_dir / "model-settings.json").write_text(
            json.dumps(model_settings(manifest, model_uri, config), indent=2), encoding="utf-8"
        )
    return root


def spec(venv: Path, repository: Path) -> ServerSpec:
    """``mlserver start <repository>``; HTTP on the port ``servers.start`` picks."""
    return ServerSpec(
        name="mlserver",
        argv=[str(venv / "bin" / "mlserver"), "start", str(repository)],
        env={
            "MLSERVER_HTTP_PORT": "{port}",
            "MLSERVER_GRPC_PORT": str(free_port()),
            # Its own interpreter must not see servewell's packages.
            "PYTHONPATH": "",
            "VIRTUAL_ENV": str(venv),
        },
        ready_path=READY_PATH,
    )


_DATATYPE = {
    FeatureKind.NUMERIC: "FP64",
    FeatureKind.INTEGER: "INT64",
    FeatureKind.BOOLEAN: "BOOL",
    FeatureKind.CATEGORICAL: "BYTES",
}


def infer_body(manifest: Manifest, rows: Sequence[Row]) -> str:
    """A V2 inference request carrying ``rows`` the way the estimator takes them.

    ``ndarray`` models: one FP64 tensor ``[n, features]``, which MLServer decodes to the
    float64 array the pipeline was trained on. ``dataframe`` models: one named input per
    feature and the request-level ``content_type: pd``, which MLServer's pandas codec turns
    into a DataFrame with those columns.
    """
    n = len(rows)
    if manifest.input_format == "ndarray":
        data = [_as_float(v) for row in rows for v in row]
        tensor = {
            "name": ARRAY_INPUT,
            "shape": [n, len(manifest.features)],
            "datatype": "FP64",
            "data": data,
        }
        return _dumps({"inputs": [tensor]})
    inputs = [
        {
            "name": feature.name,
            "shape": [n],
            "datatype": _DATATYPE[feature.kind],
            "data": [row[i] for row in rows],
        }
        for i, feature in enumerate(manifest.features)
    ]
    return _dumps({"parameters": {"content_type": "pd"}, "inputs": inputs})


def _as_float(value: object) -> float:
    if isinstance(value, bool | int | float):
        return float(value)
    raise ValueError(f"an ndarray model takes numbers, got {value!r}")


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def predictions(response: str) -> list[Any]:
    """The ``predict`` output of a V2 inference response, one value per row."""
    try:
        outputs = json.loads(response)["outputs"]
        (output,) = [o for o in outputs if o["name"] == PREDICT_OUTPUT]
        data = output["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"no {PREDICT_OUTPUT!r} output in: {response[:300]}") from exc
    if not isinstance(data, list):
        raise ValueError(f"{PREDICT_OUTPUT!r} output data is not a list: {response[:300]}")
    return data


def same_prediction(a: object, b: object) -> bool:
    """Labels equal as text; numbers equal within float32 rounding (ONNX Runtime serves in
    float32 where training verified it agrees with scikit-learn)."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-4, abs_tol=1e-6)
    return str(a) == str(b)


def count_matches(ours: Sequence[object], theirs: Sequence[object]) -> int:
    """How many rows agree (0 when the lengths differ: the answers are not comparable)."""
    if len(ours) != len(theirs):
        return 0
    return sum(same_prediction(a, b) for a, b in zip(ours, theirs, strict=True))


def package_versions(venv: Path) -> dict[str, str | None]:
    """Versions of the peer's packages inside its virtualenv (empty when it cannot run)."""
    names = ["mlserver", "mlserver-sklearn", "scikit-learn", "numpy", "uvloop", "uvicorn"]
    code = (
        "import json, sys\nfrom importlib import metadata\n"
        "def v(n):\n try: return metadata.version(n)\n"
        " except metadata.PackageNotFoundError: return None\n"
        "print(json.dumps({n: v(n) for n in sys.argv[1:]}))"
    )
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        proc = subprocess.run(
            [str(python), "-c", code, *names],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=env,
        )
        found: dict[str, str | None] = json.loads(proc.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return found

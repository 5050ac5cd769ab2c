"""Measure one scenario against a running server, and ``predict`` in-process for comparison."""

import json
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import v2, workload, wrk
from bench.scenarios import InProcess, Measurement, Outcome, Scenario
from bench.servers import RunningServer, host_busy_cpu_seconds
from serving.store import Manifest, ModelStore

SEED = 20240611


@dataclass(frozen=True)
class Load:
    """How hard and how long wrk drives each scenario (the same for every scenario)."""

    wrk: str
    duration_s: float
    warmup_s: float
    threads: int
    timeout_s: float
    single_row_bodies: int
    rows_bodies: int


class Bodies:
    """Prepared request bodies per (model, rows per request), written once per run."""

    def __init__(self, store: ModelStore, versions: dict[str, int], workdir: Path) -> None:
        self._store = store
        self._versions = versions
        self.workdir = workdir
        self._files: dict[tuple[str, int, str], Path] = {}
        self._first_rows: dict[tuple[str, int], list[workload.Row]] = {}

    def manifest(self, model: str) -> Manifest:
        return self._store.manifest(model, self._versions[model])

    def prepare(self, scenario: Scenario, count: int) -> Path:
        """The bodies file of ``scenario``, written with ``count`` bodies on first use."""
        key = (scenario.model, scenario.rows_per_request)
        file_key = (*key, scenario.protocol)
        if file_key not in self._files:
            manifest = self.manifest(scenario.model)
            if scenario.is_v2:  # the same rows (same seeds), in that protocol's bodies
                v2_bodies = []
                for i in range(count):
                    rows = workload.sample_rows(manifest, scenario.rows_per_request, SEED + i)
                    self._first_rows.setdefault(key, rows)
                    v2_bodies.append(v2.body(manifest, rows, scenario.protocol))
                name = f"{scenario.model}-{scenario.rows_per_request}.{scenario.protocol}"
                self._files[file_key] = v2.write_bodies(self.workdir / name, v2_bodies)
                return self._files[file_key]
            bodies = []
            for i in range(count):
                rows = workload.sample_rows(manifest, scenario.rows_per_request, SEED + i)
                if i == 0:
                    self._first_rows[key] = rows
                bodies.append(
                    workload.rows_body(rows)
                    if scenario.is_rows
                    else workload.instances_body(manifest, rows)
                )
            name = f"{scenario.model}-{scenario.rows_per_request}.jsonl"
            self._files[file_key] = workload.write_bodies(self.workdir / name, bodies)
        return self._files[file_key]

    def path(self, scenario: Scenario) -> Path:
        """The bodies file :meth:`prepare` wrote for ``scenario``."""
        return self._files[(scenario.model, scenario.rows_per_request, scenario.protocol)]

    def first_rows(self, scenario: Scenario) -> list[workload.Row]:
        """The rows of the first body of ``scenario`` (after :meth:`prepare`)."""
        return self._first_rows[(scenario.model, scenario.rows_per_request)]


def post_json(url: str, body: str, timeout_s: float = 60.0) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, resp.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", errors="replace")


def served_runtime(server: RunningServer, model: str, timeout_s: float = 10.0) -> str | None:
    """The ``runtime`` that ``GET /models/{model}`` reports (``onnx`` / ``sklearn``), or None."""
    try:
        with urllib.request.urlopen(f"{server.url}/models/{model}", timeout=timeout_s) as resp:
            runtime = json.loads(resp.read()).get("runtime")
    except (OSError, ValueError, AttributeError):
        return None
    return runtime if isinstance(runtime, str) else None


def preflight(server: RunningServer, scenario: Scenario, bodies_file: Path) -> list[Any]:
    """POST the first body once; raise ValueError unless it is answered like a prediction."""
    with bodies_file.open(encoding="utf-8") as fh:
        body = fh.readline().rstrip("\n")
    status, text = post_json(server.url + scenario.path, body)
    if status != 200:
        raise ValueError(f"preflight POST {scenario.path} -> HTTP {status}: {text[:300]}")
    try:
        predictions = json.loads(text)["predictions"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"preflight response has no predictions: {text[:300]}") from exc
    n = scenario.rows_per_request
    if not isinstance(predictions, list) or len(predictions) != n:
        raise ValueError(f"preflight expected {n} predictions, got: {text[:300]}")
    return predictions


def check(
    server: RunningServer,
    scenario: Scenario,
    bodies: Bodies,
    load: Load,
    expected: list[Any] | None = None,
) -> Outcome:
    """Prepare the bodies and POST the first one; an outcome without runs, or with the error.

    ``expected``: in-process predictions for the first body, to compare the service's answer.
    """
    count = load.rows_bodies if scenario.is_rows else load.single_row_bodies
    bodies_file = bodies.prepare(scenario, count)
    try:
        if scenario.is_v2:
            url = server.url + scenario.path
            predictions = v2.preflight(url, bodies_file, scenario.rows_per_request)
        else:
            predictions = preflight(server, scenario, bodies_file)
    except (ValueError, OSError) as exc:
        return Outcome(scenario, error=str(exc))
    match = None
    if expected is not None:
        match = [str(p) for p in predictions] == [str(p) for p in expected]
    return Outcome(scenario, predictions_match=match)


def measure_once(
    server: RunningServer, scenario: Scenario, bodies: Bodies, load: Load, *, warm_up: bool
) -> Measurement:
    """One wrk run of ``scenario`` (after a discarded warm-up run if asked).

    Raises WrkError when wrk fails or the server is gone afterwards.
    """
    bodies_file = bodies.path(scenario)

    def drive(duration_s: float) -> wrk.WrkRun:
        return wrk.run(
            load.wrk,
            server.url,
            scenario.path,
            bodies_file,
            connections=scenario.connections,
            threads=load.threads,
            duration_s=duration_s,
            timeout_s=load.timeout_s,
            script=v2.LUA_SCRIPT if scenario.is_v2 else wrk.LUA_SCRIPT,
        )

    if warm_up and load.warmup_s > 0:
        drive(load.warmup_s)
    cpu_before, host_before = server.cpu_seconds(), host_busy_cpu_seconds()
    measured = drive(load.duration_s)
    server_cpu_s = server.cpu_seconds() - cpu_before
    host_cpu_s = host_busy_cpu_seconds() - host_before
    if server.process.poll() is not None:
        raise wrk.WrkError(f"{server.spec.name} exited with {server.process.returncode}")
    return Measurement(
        result=measured.result,
        server_cpu_s=server_cpu_s,
        wrk_cpu_s=measured.cpu_s,
        other_cpu_s=max(0.0, host_cpu_s - server_cpu_s - measured.cpu_s),
    )


def _median_seconds(fn: Callable[[], object], min_repeats: int, budget_s: float) -> float:
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_repeats or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if len(times) >= 10_000:
            break
    return statistics.median(times)


def in_process(
    store: ModelStore, model: str, version: int, rows: list[workload.Row], budget_s: float
) -> tuple[InProcess, list[Any]]:
    """Time ``predict`` on ``rows`` and on one row, in this process; also return predictions."""
    manifest, estimator = store.load_model(model, version)
    batch = workload.model_input(manifest, rows)
    one = workload.model_input(manifest, rows[:1])
    predictions: list[Any] = estimator.predict(batch).tolist()  # also warms up
    estimator.predict(one)
    batch_s = _median_seconds(lambda: estimator.predict(batch), 3, budget_s / 2)
    single_s = _median_seconds(lambda: estimator.predict(one), 20, budget_s / 2)
    result = InProcess(model=model, rows=len(rows), batch_s=batch_s, single_row_ms=single_s * 1e3)
    return result, predictions

"""In-process cost of one batch under each runtime: scikit-learn vs ONNX Runtime.

Times exactly what a pool worker does for a batch (``serving.runtime.LoadedModel.predict`` on
encoded rows, probabilities included for classifiers), for every model in the store and batch
sizes 1, 64, 1024 and 65 536, with one thread for either runtime as in the service's workers on
a 2-core box. Run alone with ``.venv/bin/python bench/runtimes.py``; ``bench/run.py`` includes
it in its report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `serving` and `training` importable
    sys.path.insert(0, str(ROOT))

from serving.dataplane import RowEncoder  # noqa: E402
from serving.runtime import RuntimePolicy, load  # noqa: E402
from serving.store import ModelStore, Task  # noqa: E402
from training.onnx_export import generated_rows  # noqa: E402

BATCH_SIZES = (1, 64, 1024, 65_536)


@dataclass(frozen=True)
class RuntimeTiming:
    model: str
    version: int
    runtime: str
    batch_rows: int
    call_ms: float
    """Median wall time of one batch call."""
    rows_per_s: float


def _median_s(fn: Callable[[], object], budget_s: float, min_repeats: int = 3) -> float:
    fn()  # warm-up (first calls allocate)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_repeats or (time.perf_counter() < deadline and len(times) < 5000):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    store: ModelStore,
    models: Sequence[str],
    batch_sizes: Sequence[int] = BATCH_SIZES,
    budget_s: float = 0.5,
) -> list[RuntimeTiming]:
    """Median batch latency and rows/s per (model, runtime, batch size), under a pool
    worker's conditions: one thread for either runtime (ONNX Runtime's intra-op threads;
    scikit-learn's n_jobs and BLAS/OpenMP threads) and scikit-learn's finiteness re-check off."""
    import sklearn
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(1), sklearn.config_context(assume_finite=True):
        return _measure(store, models, batch_sizes, budget_s)


def _measure(
    store: ModelStore, models: Sequence[str], batch_sizes: Sequence[int], budget_s: float
) -> list[RuntimeTiming]:
    out: list[RuntimeTiming] = []
    for name in models:
        version = store.production(name) or store.versions(name)[-1]
        manifest = store.manifest(name, version)
        frame = generated_rows(manifest.features, max(batch_sizes), seed=7)
        encoded = RowEncoder(manifest).rows([tuple(r) for r in frame.itertuples(index=False)])
        want = manifest.task == Task.CLASSIFICATION
        for prefer_onnx in (False, True):
            loaded = load(store, name, version, RuntimePolicy(prefer_onnx=prefer_onnx))
            if prefer_onnx and loaded.runtime != "onnx":
                continue  # no verified ONNX file: nothing to compare
            for size in batch_sizes:
                seconds = _median_s(partial(loaded.predict, encoded[:size], want), budget_s)
                out.append(
                    RuntimeTiming(
                        name, version, loaded.runtime, size, seconds * 1e3, size / seconds
                    )
                )
    return out


def table(timings: Sequence[RuntimeTiming]) -> str:
    """One line per (model, batch size): both runtimes and the speed-up."""
    by_key = {(t.model, t.batch_rows, t.runtime): t for t in timings}
    lines = [
        f"{'model':<14} {'rows':>7} {'sklearn ms':>11} {'onnx ms':>9} "
        f"{'sklearn rows/s':>15} {'onnx rows/s':>13} {'speed-up':>9}"
    ]
    for model, rows in sorted({(t.model, t.batch_rows) for t in timings}):
        sk, ox = by_key.get((model, rows, "sklearn")), by_key.get((model, rows, "onnx"))
        speedup = f"{sk.call_ms / ox.call_ms:8.1f}x" if sk and ox else "-"
        lines.append(
            f"{model:<14} {rows:>7} {sk.call_ms if sk else float('nan'):>11.3f} "
            f"{ox.call_ms if ox else float('nan'):>9.3f} "
            f"{sk.rows_per_s if sk else float('nan'):>15,.0f} "
            f"{ox.rows_per_s if ox else float('nan'):>13,.0f} {speedup:>9}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, default=None, help="default: $SERVEWELL_STORE")
    parser.add_argument("--models", default=None, help="comma-separated (default: all)")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per cell")
    parser.add_argument("--json", type=Path, default=None, help="also write the timings here")
    args = parser.parse_args(argv)
    store = ModelStore(args.store or os.environ.get("SERVEWELL_STORE", ROOT / "models"))
    models = args.models.split(",") if args.models else store.names()
    if not models:
        print(f"store {store.root} is empty: run `make train` first", file=sys.stderr)
        return 2
    timings = measure(store, models, budget_s=args.budget)
    print(table(timings))
    if args.json:
        args.json.write_text(json.dumps([asdict(t) for t in timings], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

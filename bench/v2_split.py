"""Where the time of one large request goes: the typed ``rows`` form vs v2 binary, in process.

Runs the service's own stages on a real data plane (process pool and batcher, as
``python -m serving`` starts them) without HTTP, for the same rows (same seed) in both forms:

- typed: ``DataPlane.parse`` of ``{"rows": [...]}`` -> pool round trip -> response JSON;
- v2 binary, the body ``tritonclient`` sends by default (``bench/v2.py``: binary inputs, every
  output back in binary): ``parse_request`` -> ``Signature.rows`` -> pool round trip ->
  output tensors and response encoding.

The pool round trip (rows to a worker, the model, outputs back: through shared memory when
large, serving.shared_arrays) is split into the model's own time
(``LoadedModel.predict_coded`` in this process, same runtime and outputs as the worker) and
the rest. ``v2 bound`` is the typed total over the v2 pool round trip: the ratio v2 binary
could reach if its own stages cost nothing. HTTP is not included; the service adds the same
body reading, drift check and access log to both forms. Medians of interleaved runs.

    .venv/bin/python bench/v2_split.py --models iris,breast_cancer --rows 10000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `serving` importable
    sys.path.insert(0, str(ROOT))

from bench import v2, workload  # noqa: E402
from serving.dataplane import DataPlane  # noqa: E402
from serving.oip.service import InferenceService  # noqa: E402
from serving.oip.signature import PREDICT_PROBA  # noqa: E402
from serving.oip.tensors import encode_response, parse_request  # noqa: E402
from serving.runtime import load  # noqa: E402
from serving.settings import Settings  # noqa: E402

TYPED_STAGES = ("typed parse", "typed pool round trip", "typed response JSON")
V2_STAGES = ("v2 parse_request", "v2 Signature.rows", "v2 pool round trip", "v2 encode")


@dataclass(frozen=True)
class Split:
    """Median milliseconds per stage of one request of ``rows`` rows of ``model``."""

    model: str
    rows: int
    runtime: str
    labels_as: str
    """How the worker returns a classifier's labels: ``positions`` (numbers, looked up in the
    event loop) or their dtype."""
    stages: dict[str, float]

    @property
    def typed_ms(self) -> float:
        return sum(self.stages[s] for s in TYPED_STAGES)

    @property
    def v2_ms(self) -> float:
        return sum(self.stages[s] for s in V2_STAGES)

    @property
    def ratio(self) -> float:
        return self.typed_ms / self.v2_ms

    @property
    def bound(self) -> float:
        return self.typed_ms / self.stages["v2 pool round trip"]


async def _measure(store: Path, models: Sequence[str], rows: int, repeats: int) -> list[Split]:
    settings = Settings(store=store, inference="pool", log_level="warning")
    dataplane = DataPlane(settings)
    await dataplane.start()
    service = InferenceService(dataplane)
    out: list[Split] = []
    try:
        for name in models:
            served = dataplane.resolve(name)
            manifest = served.manifest
            sample = workload.sample_rows(manifest, rows, seed=1)
            typed_body = workload.rows_body(sample).encode()
            binary_body, header_length = v2.body(manifest, sample, v2.V2_BINARY)
            header = str(header_length)
            signature = service.signature(served)
            model = load(dataplane.store, *served.key, settings.runtime_policy())
            times: dict[str, list[float]] = {}

            def note(stage: str, start: float, times: dict[str, list[float]] = times) -> float:
                now = time.perf_counter()
                times.setdefault(stage, []).append(now - start)
                return now

            for _ in range(repeats + 1):  # the first round warms up and is dropped
                t = time.perf_counter()
                encoded, want = dataplane.parse(served, typed_body)
                t = note("typed parse", t)
                result = await dataplane.predict(served, encoded, want)
                t = note("typed pool round trip", t)
                result.to_json()
                t = note("typed response JSON", t)
                request = parse_request(binary_body, header)
                t = note("v2 parse_request", t)
                wanted = signature.wanted(request.outputs)
                matrix = signature.rows(request.inputs)
                t = note("v2 Signature.rows", t)
                proba = any(o.name == PREDICT_PROBA for o in wanted)
                result = await dataplane.predict(served, matrix, proba)
                t = note("v2 pool round trip", t)
                tensors = signature.output_tensors(result.prediction, wanted, request.binary_output)
                encode_response(name, served.key[1], request.id, tensors)
                t = note("v2 encode", t)
                values, _, indexed = model.predict_coded(matrix, proba)
                note("model alone (in process)", t)
                labels_as = "positions" if indexed else str(values.dtype)
            stages = {stage: statistics.median(v[1:]) * 1000 for stage, v in times.items()}
            runtime = served.runtime or "sklearn"
            out.append(Split(name, rows, runtime, labels_as, stages))
    finally:
        dataplane.close()
    return out


def measure(
    store: Path, models: Sequence[str], rows: int = 10_000, repeats: int = 20
) -> list[Split]:
    """Stage medians per model, from a data plane started on ``store`` for this call."""
    return asyncio.run(_measure(store, models, rows, repeats))


def table(splits: Sequence[Split]) -> str:
    lines = []
    for s in splits:
        model = s.stages["model alone (in process)"]
        lines.append(f"{s.model} ({s.runtime}), one request of {s.rows} rows, median ms:")
        for stage in (*TYPED_STAGES, *V2_STAGES):
            extra = ""
            if stage.endswith("pool round trip"):
                extra = f"   = model {model:.2f} + transfer {s.stages[stage] - model:.2f}"
            lines.append(f"  {stage:32s} {s.stages[stage]:8.2f}{extra}")
        lines.append(f"  {'typed total':32s} {s.typed_ms:8.2f}")
        lines.append(f"  {'v2 binary total':32s} {s.v2_ms:8.2f}")
        lines.append(f"  (predictions come back as {s.labels_as})")
        lines.append(
            f"  v2 binary vs typed: {s.ratio:.2f}x; bound if v2's own stages were free: "
            f"{s.bound:.2f}x"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=None, help="default: $SERVEWELL_STORE")
    parser.add_argument("--models", default="iris,breast_cancer", help="comma-separated")
    parser.add_argument("--rows", type=int, default=10_000, help="rows per request")
    parser.add_argument("--repeats", type=int, default=20, help="measured runs per stage")
    args = parser.parse_args(argv)
    store = args.store or Path(os.environ.get("SERVEWELL_STORE", ROOT / "models"))
    print(table(measure(store.resolve(), args.models.split(","), args.rows, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

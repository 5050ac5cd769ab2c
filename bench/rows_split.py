"""Where the time of one large ``rows`` request goes, stage by stage, under each runtime.

For every model and runtime it runs, in this process and one stage at a time, the very code
a request of ``--rows`` rows (10 000) passes through, and prints the median time of each (CPU
time of this process, so that other load on a shared box hardly matters; wall time for the
two pipe stages):

* ``parse``: the body to a float array (the bulk lane of ``serving.bulk_rows`` when every
  feature is numeric, else the schema and the row encoder), in the event loop;
* ``drift``: the out-of-range check of the request path plus the background pass that windows
  and counts the rows, in the event loop;
* ``to worker``: the batch through a real socketpair as the pool sends it (a large one
  through shared memory, ``serving.shared_arrays``);
* ``predict``: ``LoadedModel.predict_coded`` as a pool worker runs it (scikit-learn's finiteness
  re-check off, the policy's thread budget for both runtimes);
* ``to loop``: the reply the same way back, labels looked up from their positions;
* ``respond``: the non-finite check and the JSON body of the response, in the event loop.

Their sum is what one request costs without HTTP. With ``--serve``, the real service is also
started once per runtime (one server at a time, ``SERVEWELL_RUNTIME=auto`` then ``sklearn``) and
sent ``--requests`` sequential requests on one keep-alive connection, for the end-to-end median
and the CPU time per request of the server process and of its workers; the rows/s ratio of the
two is what ``make bench`` compares (``10 000-row request rows/s, service vs service_sklearn``).

Run: ``.venv/bin/python bench/rows_split.py [--models iris,breast_cancer] [--serve]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `serving` and `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import servers, workload  # noqa: E402
from serving.bulk_rows import parse_numeric_rows  # noqa: E402
from serving.dataplane import PredictionResult, RowEncoder, _class_key, _refuse_non_finite  # noqa: E402
from serving.drift import DriftTracker  # noqa: E402
from serving.runtime import FloatArray, LoadedModel, RuntimePolicy, load  # noqa: E402
from serving.schemas import build_request_model  # noqa: E402
from serving.settings import Settings  # noqa: E402
from serving.shared_arrays import REGION, Inbox, Outbox  # noqa: E402
from serving.store import FeatureKind, Manifest, ModelStore  # noqa: E402

STAGES = ("parse", "drift", "to worker", "predict", "to loop", "respond")


@dataclass
class Split:
    model: str
    runtime: str
    rows: int
    stages_ms: dict[str, float]
    """Median time of each stage, in STAGES order (see the module docstring)."""
    e2e_ms: float | None = None
    """Median end-to-end latency through the service (``--serve``)."""
    server_cpu_ms: float | None = None
    worker_cpu_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return sum(self.stages_ms.values())


def _median_ms(
    fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.process_time
) -> float:
    """Median time of a call: CPU time of this process by default (on a shared box, other
    processes stretch wall time but hardly the CPU time of single-threaded work)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times) * 1e3


def _interleaved_ms(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Median CPU time of each function, timed in turns (noise then hits all alike)."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times, strict=True):
            start = time.process_time()
            fn()
            spent.append(time.process_time() - start)
    return [statistics.median(t) * 1e3 for t in times]


def _parser(manifest: Manifest, max_rows: int) -> Callable[[bytes], tuple[FloatArray, bool]]:
    width = len(manifest.features)
    model = build_request_model(manifest, max_rows, "Split")
    encoder = RowEncoder(manifest)
    numeric = all(f.kind == FeatureKind.NUMERIC for f in manifest.features)

    def parse(body: bytes) -> tuple[FloatArray, bool]:
        bulk = parse_numeric_rows(body, width, max_rows) if numeric else None
        if bulk is not None:
            return bulk
        request = model.model_validate_json(body)
        return encoder.rows(request.rows), request.return_probabilities  # type: ignore[attr-defined]

    return parse


def _transfer_ms(values: tuple[Any, ...], repeats: int, *, copy: bool, labels: Any = None) -> float:
    """``values`` from one process end of a socketpair to the other as the pool sends them
    (large arrays through the sender's shared region, serving.shared_arrays) and reads them
    (a view of the region, or a copy with ``copy``; with ``labels``, the first value holds
    label positions, looked up as the event loop does)."""
    context = multiprocessing.get_context("spawn")
    sender, receiver = context.Pipe(duplex=True)
    outbox, inbox = Outbox(sender), Inbox()
    done = threading.Event()
    received: list[Any] = []

    def read() -> None:
        while not done.is_set():
            if not receiver.poll(0.1):
                continue
            message = receiver.recv()
            if message[0] == REGION:
                inbox.attach(receiver, message[1])
                continue
            first, rest = message[1], message[2:]
            if labels is None:
                first = inbox.unpack(first, copy=copy)
            else:  # the lookup makes a new array: nothing to copy first
                first = labels.take(inbox.unpack(first, copy=False), axis=0)
            received.append((first, *(inbox.unpack(v, copy=copy) for v in rest)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def once() -> None:
        count = len(received)
        sender.send(("message", *outbox.pack(*values)))
        while len(received) == count:
            time.sleep(0)

    try:  # wall time: two threads take part, and the sender spins while it waits
        return _median_ms(once, repeats, time.perf_counter)
    finally:
        done.set()
        reader.join()
        sender.close()
        receiver.close()


def _split_model(
    store: ModelStore,
    name: str,
    rows: int,
    repeats: int,
    want_probabilities: bool,
    settings: Settings,
) -> list[Split]:
    version = workload.served_version(store, name)
    manifest = store.manifest(name, version)
    raw = _body(manifest, rows, want_probabilities)
    parse = _parser(manifest, max(rows, settings.max_request_rows))
    encoded, want = parse(raw)
    drift = DriftTracker(settings.drift_window_rows)
    tracked = drift.track(manifest)

    def observe() -> None:
        drift.queue(tracked, encoded)
        tracked.flagged(encoded)
        drift.process(drift.take())

    # The event loop's part before the pool and the batch message are the same for both.
    shared = {
        "parse": _median_ms(lambda: parse(raw), repeats),
        "drift": _median_ms(observe, repeats),
        "to worker": _transfer_ms((encoded,), repeats, copy=False),
    }
    threads = settings.runtime_policy().onnx_threads
    models: list[LoadedModel] = []
    for prefer_onnx in (True, False):
        policy = RuntimePolicy(prefer_onnx=prefer_onnx, onnx_threads=threads)
        loaded = load(store, name, version, policy)
        if not prefer_onnx or loaded.runtime == "onnx":
            models.append(loaded)
    predicts = _interleaved_ms([partial(m.predict_coded, encoded, want) for m in models], repeats)
    keys = [_class_key(c) for c in manifest.target.classes or []]
    out = []
    for model, predict_ms in zip(models, predicts, strict=True):
        prediction = model.predict(encoded, want)
        result = PredictionResult(name, version, prediction, keys, want)

        def respond(prediction: Any = prediction, result: Any = result) -> None:
            _refuse_non_finite(prediction)
            result.to_json()

        values, probabilities, indexed = model.predict_coded(encoded, want)
        to_loop = _transfer_ms(
            (values, probabilities),
            repeats,
            copy=True,
            labels=model.labels if indexed else None,
        )
        stages = {
            **shared,
            "predict": predict_ms,
            "to loop": to_loop,
            "respond": _median_ms(respond, repeats),
        }
        out.append(Split(name, model.runtime, rows, stages, extra={"body_bytes": len(raw)}))
    return out


def measure(
    store: ModelStore,
    names: Sequence[str],
    rows: int,
    repeats: int,
    want_probabilities: bool,
    settings: Settings,
) -> list[Split]:
    """The in-process split of each model under each runtime it can be served with."""
    import sklearn
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    out: list[Split] = []
    # As in a pool worker: its thread budget, scikit-learn's finiteness re-check off.
    threads = settings.runtime_policy().onnx_threads
    with threadpool_limits(threads), sklearn.config_context(assume_finite=True):
        for name in names:
            out += _split_model(store, name, rows, repeats, want_probabilities, settings)
    return out


def _body(manifest: Manifest, rows: int, want_probabilities: bool) -> bytes:
    """The ``rows`` request both the in-process split and the real service are timed with."""
    body = workload.rows_body(workload.sample_rows(manifest, rows, seed=1))
    if want_probabilities:
        body = body[:-1] + ',"return_probabilities":true}'
    return body.encode()


# -- the real service, one runtime at a time -------------------------------------------------


def serve(
    store: Path,
    runtime: str,
    names: Sequence[str],
    rows: int,
    requests: int,
    want_probabilities: bool,
) -> dict[str, tuple[float, float, float]]:
    """Per model: median latency, server CPU and worker CPU per request (ms)."""
    spec = servers.service_spec(
        store, runtime=runtime, extra_env={"SERVEWELL_POLL_INTERVAL_S": "0"}
    )
    out: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="rows-split-") as log_dir:
        server = servers.start(spec, Path(log_dir), ready_timeout_s=120)
        try:
            port = server.port
            model_store = ModelStore(store)
            for name in names:
                version = workload.served_version(model_store, name)
                body = _body(model_store.manifest(name, version), rows, want_probabilities)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

                def once(
                    conn: http.client.HTTPConnection = conn, body: bytes = body, name: str = name
                ) -> None:
                    conn.request("POST", f"/models/{name}/predict", body, _JSON)
                    response = conn.getresponse()
                    answer = response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{name}: {response.status} {answer[:200]!r}")

                for _ in range(3):
                    once()
                main_before, all_before = server.main_cpu_seconds(), server.cpu_seconds()
                times = []
                for _ in range(requests):
                    start = time.perf_counter()
                    once()
                    times.append(time.perf_counter() - start)
                main_ms = (server.main_cpu_seconds() - main_before) * 1e3 / requests
                all_ms = (server.cpu_seconds() - all_before) * 1e3 / requests
                out[name] = (statistics.median(times) * 1e3, main_ms, all_ms - main_ms)
                conn.close()
        finally:
            server.stop()
    return out


_JSON = {"Content-Type": "application/json"}


def table(splits: Sequence[Split]) -> str:
    head = f"{'model':<14} {'runtime':<8}" + "".join(f"{s:>10}" for s in STAGES)
    head += f"{'sum':>9}{'e2e':>9}{'srv cpu':>9}{'wrk cpu':>9}"
    lines = [head + "   (ms per request)"]
    for s in splits:
        line = f"{s.model:<14} {s.runtime:<8}" + "".join(f"{s.stages_ms[k]:>10.2f}" for k in STAGES)
        line += f"{s.total_ms:>9.2f}"
        for value in (s.e2e_ms, s.server_cpu_ms, s.worker_cpu_ms):
            line += f"{value:>9.2f}" if value is not None else f"{'-':>9}"
        lines.append(line)
    by_key = {(s.model, s.runtime): s for s in splits}
    for model in dict.fromkeys(s.model for s in splits):
        onnx, sk = by_key.get((model, "onnx")), by_key.get((model, "sklearn"))
        if onnx is None or sk is None:
            continue
        ratio = sk.total_ms / onnx.total_ms
        text = f"{model}: rows/s ONNX Runtime / scikit-learn, stages summed {ratio:.2f}x"
        if onnx.e2e_ms and sk.e2e_ms:
            text += f", end to end {sk.e2e_ms / onnx.e2e_ms:.2f}x"
        shared = onnx.total_ms - onnx.stages_ms["predict"]
        text += (
            f"; with predict free under ONNX Runtime it would be at most "
            f"{sk.total_ms / shared:.2f}x"
        )
        lines.append(text)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=None, help="default: $SERVEWELL_STORE")
    parser.add_argument("--models", default="iris,breast_cancer", help="comma-separated")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per stage")
    parser.add_argument("--probabilities", action="store_true", help="ask for probabilities")
    parser.add_argument("--serve", action="store_true", help="also time the real service")
    parser.add_argument("--requests", type=int, default=30, help="sequential requests (--serve)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    root = args.store or Path(os.environ.get("SERVEWELL_STORE", ROOT / "models"))
    store = ModelStore(root)
    names = [n for n in args.models.split(",") if n]
    missing = [n for n in names if n not in store.names()]
    if missing:
        print(f"not in the store {root}: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = Settings(store=root)
    splits = measure(store, names, args.rows, args.repeats, args.probabilities, settings)
    if args.serve:
        for runtime, label in (("auto", "onnx"), ("sklearn", "sklearn")):
            served = serve(root, runtime, names, args.rows, args.requests, args.probabilities)
            for split in splits:
                if split.runtime == label and split.model in served:
                    split.e2e_ms, split.server_cpu_ms, split.worker_cpu_ms = served[split.model]
    print(table(splits))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in splits], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

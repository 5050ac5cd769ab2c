"""Throughput and peak memory of bulk CSV scoring (`python -m training score`).

    .venv/bin/python bench/score.py        # iris and breast_cancer, 1 000 000 rows, 3 runs each
    .venv/bin/python bench/score.py --rows 200000 --runs 2 --models iris

Trains the shipped specs into a temporary store (or uses ``--store``), writes a CSV per model
from its training data with Gaussian noise (5% of each feature's spread), then scores it
``--runs`` times, each in a fresh subprocess, as a user would. Reports rows/s (the CLI's own
figure: reading, checking, predicting and writing) and the subprocess's peak RSS (as the CLI
reports it, VmHWM). Prints a table and writes ``bench/results/score-latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from serving.store import FeatureKind, ModelStore
from training.datasets import load_dataset
from training.run import train
from training.spec import shipped_spec

BLOCK_ROWS = 50_000
"""The CSV repeats one noisy block of this many rows: generating a million distinct rows
would take longer than scoring them, and parsing costs the same either way."""


def noisy_csv(name: str, rows: int, path: Path, seed: int = 0) -> None:
    """``rows`` rows resampled from the training data of shipped spec ``name``, numeric
    features jittered by 5% of their standard deviation (integers rounded)."""
    data = load_dataset(shipped_spec(name))
    rng = np.random.default_rng(seed)
    block = data.X.sample(n=min(BLOCK_ROWS, rows), replace=True, random_state=seed)
    block = block.reset_index(drop=True)
    for column, kind in data.kinds.items():
        if kind in (FeatureKind.NUMERIC, FeatureKind.INTEGER):
            values = block[column].to_numpy(dtype=float)
            values = values + rng.normal(0, 0.05 * np.nanstd(values), len(values))
            block[column] = np.round(values) if kind == FeatureKind.INTEGER else values
    text = block.to_csv(index=False, float_format="%.6g", lineterminator="\n")
    header, body = text.split("\n", 1)
    with path.open("w", encoding="utf-8") as fh:
        fh.write(header + "\n")
        left = rows
        lines = body.splitlines(keepends=True)
        while left > 0:
            take = min(left, len(lines))
            fh.write(body if take == len(lines) else "".join(lines[:take]))
            left -= take


def run_once(store: Path, name: str, data: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """One scoring run in a fresh subprocess: its rows/s and peak RSS, as the CLI reports them
    (VmHWM; see training.score.peak_memory_mb for why not this process's ru_maxrss of it)."""
    env = {**os.environ, "SERVEWELL_STORE": str(store)}
    log = out.with_suffix(".log")
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "training", "score", name, str(data), "--out", str(out), *extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        proc.wait()
    text = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"scoring failed: {text}")
    rate = re.search(r"\(([\d,]+) rows/s\)", text)
    runtime = re.search(r"\((onnx|sklearn)\)", text)
    peak = re.search(r"peak memory (\d+) MB", text)
    assert rate is not None, text
    assert runtime is not None, text
    assert peak is not None, text
    return {
        "rows_per_s": int(rate.group(1).replace(",", "")),
        "peak_rss_mb": int(peak.group(1)),
        "runtime": runtime.group(1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", default="iris,breast_cancer")
    parser.add_argument("--store", type=Path, help="use this store instead of training afresh")
    parser.add_argument("--probabilities", action="store_true")
    parser.add_argument("--sklearn", action="store_true", help="scikit-learn instead of ONNX")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chunk-rows", type=int, default=None)
    args = parser.parse_args()
    extra = ["--probabilities"] if args.probabilities else []
    if args.sklearn:
        extra.append("--sklearn")
    if args.threads:
        extra += ["--threads", str(args.threads)]
    if args.chunk_rows:
        extra += ["--chunk-rows", str(args.chunk_rows)]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = args.store or tmp / "store"
        names = args.models.split(",")
        for name in names:
            if args.store is None:
                train(shipped_spec(name), ModelStore(store), echo=lambda _: None)
            data = tmp / f"{name}.csv"
            noisy_csv(name, args.rows, data)
            size_mb = data.stat().st_size / 1e6
            for run in range(1, args.runs + 1):
                r = run_once(store, name, data, tmp / f"{name}.out.csv", extra)
                r.update(model=name, run=run, rows=args.rows, csv_mb=round(size_mb, 1))
                results.append(r)
                print(
                    f"{name:<14} run {run}: {r['rows_per_s']:>10,} rows/s  "
                    f"peak RSS {r['peak_rss_mb']:>7.1f} MB  ({r['runtime']}, "
                    f"{args.rows:,} rows, {size_mb:.0f} MB CSV)",
                    flush=True,
                )
    out = Path(__file__).parent / "results" / "score-latest.json"
    out.parent.mkdir(exist_ok=True)
    settings = vars(args) | {"store": str(args.store)}
    out.write_text(json.dumps({"args": settings, "runs": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

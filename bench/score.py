"""Throughput and peak memory of bulk CSV scoring (`python -m training score`), as a user runs
it: the shipped specs trained into a temporary store (or ``--store``), a noisy CSV per model,
scored ``--runs`` times in fresh subprocesses; other options go to the CLI (bench/README.md).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from subprocess import PIPE
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
    for column, kind in data.kinds.items():
        if kind in (FeatureKind.NUMERIC, FeatureKind.INTEGER):
            values = block[column].to_numpy(dtype=float)
            values = values + rng.normal(0, 0.05 * np.nanstd(values), len(values))
            block[column] = np.round(values) if kind == FeatureKind.INTEGER else values
    csv = block.to_csv(index=False, float_format="%.6g", lineterminator="\n")
    header, body = csv.split("\n", 1)
    lines = body.splitlines(keepends=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write(header + "\n")
        for _ in range(rows // len(lines)):  # the whole block, as often as it fits
            fh.write(body)
        fh.writelines(lines[: rows % len(lines)])


def run_once(store: Path, name: str, data: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """One scoring run in a fresh subprocess: its rows/s and peak RSS, as the CLI reports them
    (VmHWM; see training.score.peak_memory_mb for why not this process's ru_maxrss of it)."""
    argv = [sys.executable, "-m", "training", "score", name, str(data), "--out", str(out), *extra]
    env = {**os.environ, "SERVEWELL_STORE": str(store)}
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=PIPE, text=True)
    found = [re.search(p, proc.stderr) for p in (r"\(([\d,]+) rows/s\)", r"peak memory (\d+) MB")]
    runtime = re.search(r"\((onnx|sklearn)\)", proc.stderr)
    if proc.returncode != 0 or runtime is None or None in found:
        raise SystemExit(f"scoring failed: {proc.stderr}")
    rate, peak = (int(m.group(1).replace(",", "")) for m in found if m)
    return {"rows_per_s": rate, "peak_rss_mb": peak, "runtime": runtime.group(1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--rows", type=int, default=1_000_000)
    add("--runs", type=int, default=3)
    add("--models", default="iris,breast_cancer")
    add("--store", type=Path, help="use this store instead of training afresh")
    args, extra = parser.parse_known_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = args.store or tmp / "store"
        for name in args.models.split(","):
            if args.store is None:
                train(shipped_spec(name), ModelStore(store), echo=lambda _: None)
            data = tmp / f"{name}.csv"
            noisy_csv(name, args.rows, data)
            size_mb = data.stat().st_size / 1e6
            for run in range(1, args.runs + 1):
                r = run_once(store, name, data, tmp / f"{name}.out.csv", extra)
                r.update(model=name, run=run, rows=args.rows, csv_mb=round(size_mb, 1))
                results.append(r)
                figures = f"{r['rows_per_s']:>10,} rows/s  peak RSS {r['peak_rss_mb']:>7.1f} MB"
                print(f"{name:<14} run {run}: {figures}  ({r['runtime']}, {args.rows:,} rows, "
                      f"{size_mb:.0f} MB CSV)", flush=True)  # fmt: skip
    out = Path(__file__).parent / "results" / "score-latest.json"
    out.parent.mkdir(exist_ok=True)
    settings = vars(args) | {"store": str(args.store), "cli": extra}
    out.write_text(json.dumps({"args": settings, "runs": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a run writes beside the model in its report folder: every fold score and the gate's
comparisons (``evaluation.json``), and a searched version's candidates (``search_results.csv``)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluate import FoldScores
from training.gate import GateDecision

EVALUATION_FILE = "evaluation.json"
"""In the report folder: holdout metrics, every fold score, the gate's comparisons."""
SEARCH_FILE = "search_results.csv"
"""In the report folder of a searched version: one row per candidate, best first."""


def spread(scores: FoldScores) -> str:
    return ", ".join(
        f"{k}={np.mean(v):.4f}±{np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}"
        for k, v in sorted(scores.items())
    )


def write_evaluation(
    out: Path,
    *,
    holdout: dict[str, float],
    folds: dict[str, FoldScores | None],
    decision: GateDecision,
    outcome: dict[str, Any],
) -> None:
    """Every fold score behind the gate's decision, next to the holdout figures."""
    comparisons = [c for c in (decision.baseline, decision.versus_production) if c is not None]
    body = {
        "holdout": holdout,
        "cv": outcome["cv"],
        "folds": {k: v for k, v in folds.items() if v is not None},
        "gate": {
            "promote": decision.promote,
            "reason": decision.reason,
            "comparisons": [{**asdict(c), "better": c.better} for c in comparisons],
        },
    }
    (out / EVALUATION_FILE).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


def write_search_table(path: Path, table: list[dict[str, Any]]) -> None:
    names = sorted({k for row in table for k in row["params"]})
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["rank", "mean_test_score", "std_test_score", *names])
        for row in table:
            writer.writerow(
                [
                    row["rank"],
                    repr(row["mean_test_score"]),
                    repr(row["std_test_score"]),
                    *(row["params"].get(n, "") for n in names),
                ]
            )

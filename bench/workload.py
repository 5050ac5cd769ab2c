"""Request bodies for a model, generated from its manifest.

Values are drawn uniformly within each feature's training range, so every request carries
different numbers and no cache (in the service or anywhere else) can answer from memory.
"""

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.store import Feature, FeatureKind, Manifest, ModelNotFoundError, ModelStore

Value = float | int | bool | str | None
Row = list[Value]


def served_version(store: ModelStore, name: str) -> int:
    """The production version of ``name``, or its newest when nothing is promoted."""
    version = store.production(name)
    if version is not None:
        return version
    versions = store.versions(name)
    if not versions:
        raise ModelNotFoundError(f"model {name!r} is not in the store at {store.root}")
    return versions[-1]


def sample_value(feature: Feature, rng: random.Random) -> Value:
    """One plausible value for ``feature``."""
    if feature.kind is FeatureKind.BOOLEAN:
        return rng.random() < 0.5
    if feature.kind is FeatureKind.CATEGORICAL:
        if feature.categories:
            return rng.choice(feature.categories)
        return None if feature.example is None else str(feature.example)
    low, high = _range(feature)
    if feature.kind is FeatureKind.INTEGER:
        return rng.randint(round(low), round(high))
    return round(rng.uniform(low, high), 4)


def _range(feature: Feature) -> tuple[float, float]:
    if feature.min is not None and feature.max is not None:
        return feature.min, feature.max
    example = feature.example
    center = float(example) if isinstance(example, int | float) else 0.0
    return center - 1.0, center + 1.0


def sample_rows(manifest: Manifest, n: int, seed: int) -> list[Row]:
    """``n`` rows in the manifest's feature order."""
    rng = random.Random(seed)
    return [[sample_value(f, rng) for f in manifest.features] for _ in range(n)]


def instances_body(manifest: Manifest, rows: Sequence[Row]) -> str:
    """``{"instances": [{feature: value, ...}, ...]}`` (records keyed by feature name)."""
    names = manifest.feature_names
    return _dumps({"instances": [dict(zip(names, row, strict=True)) for row in rows]})


def rows_body(rows: Sequence[Row]) -> str:
    """``{"rows": [[...], ...]}`` (positional, in manifest feature order)."""
    return _dumps({"rows": list(rows)})


def _dumps(payload: dict[str, Any]) -> str:
    # Compact and on one line: the wrk script reads one body per line.
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def write_bodies(path: Path, bodies: Sequence[str]) -> Path:
    """Write bodies one per line, the format ``bench/post.lua`` reads."""
    if any("\n" in body for body in bodies):
        raise ValueError("a request body contains a newline")
    path.write_text("".join(body + "\n" for body in bodies), encoding="utf-8")
    return path


def model_input(manifest: Manifest, rows: Sequence[Row]) -> Any:
    """Rows as the estimator takes them: a float array, or a DataFrame with named columns."""
    if manifest.input_format == "dataframe":
        import pandas as pd

        return pd.DataFrame(list(rows), columns=manifest.feature_names)
    import numpy as np

    return np.asarray(rows, dtype=np.float64)

"""What a prediction response carries: labels as trained, keys that match them, finite numbers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from serving.codecs.typed import TypedCodec
from serving.core.context import RequestContext
from serving.core.errors import InvalidInputError
from serving.core.loading import build_dataplane
from serving.core.predictor import answer
from serving.settings import Settings
from serving.store import ModelStore, Task
from training.run import train
from training.spec import adhoc_csv_spec, shipped_spec


def _predict(store: ModelStore, name: str, body: bytes) -> dict[str, object]:
    dataplane = build_dataplane(Settings(store=store.root, inference="inline"))

    async def go() -> bytes:
        await dataplane.start()
        try:
            codec = TypedCodec(dataplane)
            served = dataplane.resolve(name)
            payload, _ = await answer(codec, dataplane, served, body, (), RequestContext("t"))
            return payload
        finally:
            dataplane.close()

    result: dict[str, object] = orjson.loads(asyncio.run(go()))
    return result


def test_boolean_labels_stay_booleans_with_matching_keys(tmp_path: Path) -> None:
    csv = tmp_path / "flags.csv"
    csv.write_text("x,z,y\n" + "".join(f"{i},{i % 5},{i % 2 == 0}\n" for i in range(60)))
    store = ModelStore(tmp_path / "store")
    train(adhoc_csv_spec(csv, "y", Task.CLASSIFICATION, None), store, echo=lambda _: None)
    assert store.manifest("flags", 1).target.classes == [False, True]

    body = _predict(store, "flags", b'{"rows": [[2, 2], [3, 3]], "return_probabilities": true}')
    predictions = body["predictions"]
    assert isinstance(predictions, list)
    assert all(isinstance(p, bool) for p in predictions)
    probabilities = body["probabilities"]
    assert isinstance(probabilities, list)
    assert set(probabilities[0]) == {"false", "true"}  # keys read like the labels


def test_overflowing_inputs_get_422_naming_the_row(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    train(shipped_spec("diabetes"), store, echo=lambda _: None)
    fine = [0.0] * 10
    huge = [1e308] * 10  # finite JSON, but the scaler overflows to inf
    with pytest.raises(InvalidInputError) as info:
        _predict(store, "diabetes", orjson.dumps({"rows": [fine, huge]}))
    assert [d.loc for d in info.value.details] == [(1,)]
    assert "far outside the training ranges" in info.value.message

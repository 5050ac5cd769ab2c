from __future__ import annotations

import pytest

from serving.store import ModelStore, StoreError
from tests.training.conftest import quiet
from training.prune import prune
from training.run import train
from training.spec import shipped_spec


def test_prune_keeps_the_newest_production_and_the_previous_production(
    store: ModelStore,
) -> None:
    spec = shipped_spec("diabetes")
    for alpha in (0.5, 0.6, 0.7, 0.8, 0.9):  # different specs: five versions
        train(spec.with_overrides({"estimator": {"params": {"alpha": alpha}}}), store, echo=quiet)
    store.promote("diabetes", 2)
    store.promote("diabetes", 3)
    assert store.versions("diabetes") == [1, 2, 3, 4, 5]

    result = prune(store, "diabetes", keep=1)

    assert result.removed == [1, 4]
    assert result.kept == [2, 3, 5]
    assert store.versions("diabetes") == [2, 3, 5]
    assert store.production("diabetes") == 3
    leftovers = [p.name for p in store.version_path("diabetes", 5).parent.iterdir()]
    assert not [name for name in leftovers if name.startswith(".")]
    assert store.rollback("diabetes") == (3, 2)


def test_prune_refuses_to_keep_nothing(store: ModelStore) -> None:
    train(shipped_spec("diabetes"), store, echo=quiet)
    with pytest.raises(StoreError, match="keep at least one"):
        prune(store, "diabetes", keep=0)

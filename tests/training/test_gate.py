from __future__ import annotations

from serving.store import ModelStore
from tests.training.conftest import quiet
from training.run import train
from training.spec import shipped_spec

# A deliberately weak iris model: heavy regularisation drops the macro F1 far below production.
WEAK = {"estimator": {"params": {"C": 0.0005}}}


def test_not_worse_version_is_promoted(store: ModelStore) -> None:
    spec = shipped_spec("iris")
    train(spec, store, echo=quiet)
    second = train(spec, store, echo=quiet)
    assert second.version == 2
    assert second.promoted
    assert store.production("iris") == 2


def test_worse_version_is_stored_not_promoted(store: ModelStore) -> None:
    good = train(shipped_spec("iris"), store, echo=quiet)
    weak = train(shipped_spec("iris").with_overrides(WEAK), store, echo=quiet)

    assert weak.manifest.primary_score < good.manifest.primary_score - 0.01
    assert not weak.promoted
    assert store.versions("iris") == [1, 2]
    assert store.production("iris") == 1
    assert "worse than production v1" in weak.decision.reason
    table = weak.decision.comparison(weak.manifest)
    assert "f1_macro" in table
    assert "v1 (production)" in table
    assert "v2 (new)" in table


def test_force_promotes_a_worse_version(store: ModelStore) -> None:
    train(shipped_spec("iris"), store, echo=quiet)
    weak = train(shipped_spec("iris").with_overrides(WEAK), store, force_promote=True, echo=quiet)
    assert weak.promoted
    assert store.production("iris") == 2


def test_tolerance_admits_a_slightly_worse_version(store: ModelStore) -> None:
    train(shipped_spec("iris"), store, echo=quiet)
    lenient = shipped_spec("iris").with_overrides({**WEAK, "evaluation": {"tolerance": 1.0}})
    assert train(lenient, store, echo=quiet).promoted


def test_lower_is_better_metric_for_regressors(store: ModelStore) -> None:
    train(shipped_spec("diabetes"), store, echo=quiet)
    worse = shipped_spec("diabetes").with_overrides({"estimator": {"params": {"alpha": 5000.0}}})
    result = train(worse, store, echo=quiet)
    assert result.manifest.primary_metric == "rmse"
    assert not result.promoted
    assert store.production("diabetes") == 1

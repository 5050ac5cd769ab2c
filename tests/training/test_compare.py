from __future__ import annotations

from serving.store import ModelStore
from tests.training.conftest import quiet
from training.compare import render
from training.run import train
from training.spec import shipped_spec


def test_compare_shows_every_version_and_what_changed(store: ModelStore) -> None:
    spec = shipped_spec("iris")
    train(spec, store, echo=quiet)
    train(spec.with_overrides({"estimator": {"params": {"C": 0.5}}}), store, echo=quiet)
    text = render(store, "iris")
    header = text.splitlines()[0]
    assert "v1 (production)" in header
    assert "v2" in header
    assert "f1_macro * holdout" in text
    assert "±" in text  # cross-validation spread
    assert "f1_macro baseline" in text
    assert "C=0.5" in text
    assert "v2 vs v1:" in text
    assert "estimator.params.C: 1.0 -> 0.5" in text

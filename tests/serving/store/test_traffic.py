"""The traffic policy file beside the production pointer: written whole, verified, ended by a
promote or rollback, refused when it cannot apply."""

from __future__ import annotations

import json

import pytest

from serving.store import MODEL_FILE, ModelStore, StoreError, TrafficMode, TrafficPolicy
from serving.store.errors import IntegrityError
from serving.store.traffic import TRAFFIC_FILE
from tests.serving.artifacts import publish_copy


@pytest.fixture
def iris(tmp_path_factory: pytest.TempPathFactory, trained_store: ModelStore) -> ModelStore:
    """iris v1 (production) and v2, a copy."""
    store = ModelStore(tmp_path_factory.mktemp("traffic"))
    publish_copy(store, "iris", trained_store, "iris", 1)
    store.promote("iris", 1)
    publish_copy(store, "iris", store, "iris", 1)
    return store


def canary(version: int = 2, share: float = 0.1, production: int = 1) -> TrafficPolicy:
    return TrafficPolicy(
        TrafficMode.CANARY, production, ((production, 1 - share), (version, share)), 1234.5
    )


def test_a_policy_is_written_read_back_and_ended(iris: ModelStore) -> None:
    assert iris.traffic("iris") is None
    policy = canary()
    iris.set_traffic("iris", policy)
    assert iris.traffic("iris") == policy
    assert json.loads((iris.root / "iris" / TRAFFIC_FILE).read_text())["mode"] == "canary"
    assert iris.end_traffic("iris") == policy
    assert iris.traffic("iris") is None
    assert iris.end_traffic("iris") is None


@pytest.mark.parametrize("change", ["promote", "rollback"])
def test_a_change_of_production_ends_the_experiment(iris: ModelStore, change: str) -> None:
    if change == "rollback":
        iris.promote("iris", 2)
        iris.set_traffic("iris", canary(version=1, production=2))
        iris.rollback("iris")
    else:
        iris.set_traffic("iris", canary())
        iris.promote("iris", 2)
    assert iris.traffic("iris") is None


def test_promoting_production_again_keeps_the_experiment(iris: ModelStore) -> None:
    iris.set_traffic("iris", canary())
    iris.promote("iris", 1)  # no change of production
    assert iris.traffic("iris") == canary()


def test_a_version_failing_verification_is_refused_and_the_old_policy_stays(
    iris: ModelStore,
) -> None:
    iris.set_traffic("iris", canary())
    broken = publish_copy(iris, "iris", iris, "iris", 1)
    path = iris.version_path("iris", broken) / MODEL_FILE
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(IntegrityError):
        iris.set_traffic("iris", canary(version=broken))
    assert iris.traffic("iris") == canary()


def test_versions_that_take_other_inputs_are_refused(iris: ModelStore) -> None:
    features = [f.model_dump() for f in iris.manifest("iris", 1).features]
    features[0]["name"] = "renamed"
    other = publish_copy(iris, "iris", iris, "iris", 1, manifest_changes={"features": features})
    with pytest.raises(StoreError, match="takes other inputs than production"):
        iris.set_traffic("iris", canary(version=other))
    assert iris.traffic("iris") is None


def test_a_policy_against_a_former_production_is_refused(iris: ModelStore) -> None:
    with pytest.raises(StoreError, match="production is no longer v2"):
        iris.set_traffic("iris", canary(version=1, production=2))


def test_an_unknown_key_field_is_refused(iris: ModelStore) -> None:
    policy = TrafficPolicy(TrafficMode.AB, 1, ((1, 0.5), (2, 0.5)), 1.0, key_field="nope")
    with pytest.raises(StoreError, match="key_field 'nope' is not a feature"):
        iris.set_traffic("iris", policy)


@pytest.mark.parametrize(
    "text", ["{", '{"mode": "canary"}', '{"mode": "x", "production": 1}', "[]"]
)
def test_a_corrupt_policy_file_is_reported_and_can_be_ended(iris: ModelStore, text: str) -> None:
    (iris.root / "iris" / TRAFFIC_FILE).write_text(text)
    with pytest.raises(StoreError, match=r"traffic policy .* is corrupt"):
        iris.traffic("iris")
    assert iris.end_traffic("iris") is None
    assert iris.traffic("iris") is None


@pytest.mark.parametrize(
    "policy",
    [
        TrafficPolicy(TrafficMode.CANARY, 1, ((1, 0.5), (2, 0.6)), 1.0),
        TrafficPolicy(TrafficMode.CANARY, 1, ((1, 1.0),), 1.0),
        TrafficPolicy(TrafficMode.SHADOW, 1, ((1, 1.0),), 1.0),
        TrafficPolicy(TrafficMode.SHADOW, 1, ((1, 1.0),), 1.0, shadow=2, sample=0.0),
        TrafficPolicy(TrafficMode.AB, 1, ((1, 0.5), (2, 0.5)), 1.0, shadow=2),
    ],
)
def test_policies_that_cannot_apply_are_refused(iris: ModelStore, policy: TrafficPolicy) -> None:
    with pytest.raises(ValueError, match=r"weights|shadow|canary"):
        iris.set_traffic("iris", policy)

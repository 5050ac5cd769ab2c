"""The metric definitions table: one family per row, each on its own ``Metrics`` attribute."""

from __future__ import annotations

from serving.observe.families import DEFINITIONS
from serving.observe.metrics import Metrics


def test_every_definition_has_its_typed_attribute_and_a_unique_name() -> None:
    annotated = [name for name, kind in Metrics.__annotations__.items() if kind == "Family"]
    assert [d.attribute for d in DEFINITIONS] == annotated
    assert len({d.name for d in DEFINITIONS}) == len(DEFINITIONS)
    metrics = Metrics()
    for definition, family in zip(DEFINITIONS, metrics.families, strict=True):
        assert getattr(metrics, definition.attribute) is family
        assert family.name == definition.name


def test_only_histograms_have_buckets_and_only_gauges_take_the_maximum() -> None:
    for definition in DEFINITIONS:
        assert bool(definition.bounds) == (definition.kind == "histogram"), definition.name
        assert list(definition.bounds) == sorted(definition.bounds), definition.name
        if definition.merge == "max":
            assert definition.kind == "gauge", definition.name

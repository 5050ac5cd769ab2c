"""Request models built from manifests: types, enums, strictness, documentation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from serving.codecs.schemas import build_request_model
from serving.store import ModelStore

ROW = {
    "tenure_months": 12,
    "monthly_charges": 70.5,
    "support_calls": 0,
    "senior_citizen": False,
    "contract": "two-year",
    "internet_service": "dsl",
    "payment_method": "mailed-check",
}


@pytest.fixture
def churn_request(trained_store: ModelStore) -> Any:
    return build_request_model(trained_store.manifest("churn", 1), max_rows=3)


def _locs(model: Any, body: dict[str, Any]) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return [e["loc"] for e in info.value.errors()]


def test_valid_records_and_rows(churn_request: Any) -> None:
    assert churn_request.model_validate({"instances": [ROW]}).instances == [ROW]
    parsed = churn_request.model_validate({"rows": [list(ROW.values())]})
    assert parsed.rows == [tuple(ROW.values())]


def test_values_must_have_the_feature_kind(churn_request: Any) -> None:
    for field, value in [
        ("tenure_months", 1.5),
        ("senior_citizen", "yes"),
        ("senior_citizen", 0),
        ("contract", "monthly"),
        ("monthly_charges", "70"),
        ("monthly_charges", float("nan")),
        ("monthly_charges", float("inf")),
        ("monthly_charges", None),
    ]:
        assert _locs(churn_request, {"instances": [{**ROW, field: value}]}) == [
            ("instances", 0, field)
        ], (field, value)


def test_unknown_and_missing_fields_are_rejected(churn_request: Any) -> None:
    locs = _locs(churn_request, {"instances": [{**ROW, "tenure": 3}]})
    assert locs == [("instances", 0, "tenure")]
    partial = dict(ROW)
    del partial["contract"]
    assert _locs(churn_request, {"instances": [partial]}) == [("instances", 0, "contract")]
    assert _locs(churn_request, {"instances": [ROW], "extra": 1}) == [("extra",)]


def test_row_count_is_bounded(churn_request: Any) -> None:
    assert _locs(churn_request, {"instances": []}) == [("instances",)]
    assert _locs(churn_request, {"instances": [ROW] * 4}) == [("instances",)]


def test_json_schema_documents_the_features(trained_store: ModelStore, churn_request: Any) -> None:
    schema = churn_request.model_json_schema()
    instance = schema["$defs"]["ChurnV1Instance"]
    properties = instance["properties"]
    assert list(properties) == list(ROW)
    assert instance["additionalProperties"] is False
    assert properties["contract"]["enum"] == ["month-to-month", "one-year", "two-year"]
    assert properties["tenure_months"]["type"] == "integer"
    assert properties["senior_citizen"]["type"] == "boolean"
    charges = properties["monthly_charges"]
    assert charges["type"] == "number"
    assert "training range" in charges["description"]
    feature = next(
        f for f in trained_store.manifest("churn", 1).features if f.name == "monthly_charges"
    )
    assert charges["examples"] == [feature.example]
    assert schema["examples"][0]["instances"][0]["contract"] in properties["contract"]["enum"]

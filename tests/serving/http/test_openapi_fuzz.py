"""Schemathesis against the live OpenAPI schema of the real service: for every operation,
generated requests, valid and invalid, never get a 5xx, and every response conforms to its
documented status codes, content type and schema."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.serving.conftest import RunningServer

EXAMPLES = 20
"""Generated requests per operation and mode (bounded: the suite must stay fast)."""


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_survives_generated_requests(
    server: RunningServer, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 10  # health, models and a predict operation per served model
    exercised: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=EXAMPLES,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: keeps the run bounded
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def survives(case: Case[Any]) -> None:
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            # In place of the check left out: a schema-valid request may be refused when its
            # values are so far out of range that the model's output overflows (a schema
            # cannot say that), and for no other reason.
            if mode == GenerationMode.POSITIVE and response.status_code == 422:
                assert "not a finite number" in response.text, response.text

        try:
            survives()
        except Unsatisfiable:
            # Nothing invalid can be sent to an operation without parameters or body.
            assert mode == GenerationMode.NEGATIVE, operation.label
            assert operation.method.upper() == "GET", operation.label
            continue
        exercised.append(operation.label)
    predicts = [label for label in exercised if label.endswith("/predict")]
    assert len(predicts) >= 8, exercised  # every served model, production and versioned

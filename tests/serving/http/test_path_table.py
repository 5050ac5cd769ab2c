"""The edge's table of prediction paths: which paths have an operation's shape."""

from __future__ import annotations

import pytest

from serving.core.errors import InvalidInputError, NotReadyError
from serving.http.path_table import PathTable


def test_only_the_operation_s_two_shapes_are_its_paths() -> None:
    table = PathTable("/models", "predict")
    assert table.parts("/models/iris/predict") == ["iris"]
    assert table.parts("/models/iris/versions/2/predict") == ["iris", "versions", "2"]
    for path in (
        "/models/predict",
        "/models//predict",
        "/models/a/b/predict",
        "/models/iris/versions//predict",
        "/models/iris/predict/",
        "/v2/models/iris/infer",
    ):
        assert table.parts(path) is None, path
    assert table.endpoint_of("/models/iris/predict") == "/models/{name}/predict"
    assert table.endpoint_of("/models/iris/versions/2/predict") == (
        "/models/{name}/versions/{version}/predict"
    )


def test_paths_not_in_the_table_resolve_to_the_errors_of_a_route() -> None:
    table = PathTable("/v2/models", "infer")
    with pytest.raises(NotReadyError):
        table.resolve("/v2/models/iris/infer")  # before the models are loaded
    table.dataplane = object()  # type: ignore[assignment]
    with pytest.raises(InvalidInputError) as refused:
        table.resolve("/v2/models/iris/versions/01/infer")
    assert [d.loc for d in refused.value.details] == [("path", "version")]

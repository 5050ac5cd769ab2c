"""A version's training report through the API: each file as training wrote it, checked
against the manifest; unknown files and paths out of the report are 404, a changed file 409."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from serving.store import ModelNotFoundError, ModelStore
from tests.serving.artifacts import flip_a_byte
from tests.serving.conftest import RunningServer, quiet_settings, running_server, train_into


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return train_into(tmp_path_factory.mktemp("reports"), ["iris"])


@pytest.fixture(scope="module")
def live(store: ModelStore) -> Iterator[RunningServer]:
    with running_server(quiet_settings(store, pool_size=1)) as running:
        yield running


@pytest.fixture
def client(live: RunningServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


def test_every_report_file_is_served_as_written(client: httpx.Client, store: ModelStore) -> None:
    folder = store.version_path("iris", 1)
    files = [f for f in store.manifest("iris", 1).files if f.startswith("report/")]
    assert "report/model_card.md" in files
    for rel in files:
        answer = client.get(f"/models/iris/versions/1/report/{rel.removeprefix('report/')}")
        assert answer.status_code == 200, rel
        assert answer.content == (folder / rel).read_bytes()
        if rel.endswith(".png"):
            assert answer.headers["content-type"] == "image/png"
    card = client.get("/models/iris/versions/1/report/model_card.md")
    assert card.headers["content-type"].startswith("text/markdown")


@pytest.mark.parametrize(
    "path",
    [
        "/models/iris/versions/1/report/nope.png",
        "/models/iris/versions/1/report/..%2Fmanifest.json",
        "/models/iris/versions/1/report/%2E%2E",
        "/models/iris/versions/9/report/model_card.md",
        "/models/nope/versions/1/report/model_card.md",
    ],
)
def test_what_is_not_a_report_file_is_a_404(client: httpx.Client, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 404, answer.text
    assert "error" in answer.json()


def test_a_changed_report_file_is_refused(client: httpx.Client, store: ModelStore) -> None:
    path = store.version_path("iris", 1) / "report" / "roc.png"
    original = path.read_bytes()
    try:
        flip_a_byte(path)
        answer = client.get("/models/iris/versions/1/report/roc.png")
        assert answer.status_code == 409
        assert answer.json()["error"]["type"] == "artifact_refused"
        assert str(store.root) not in answer.text
    finally:
        path.write_bytes(original)
    assert client.get("/models/iris/versions/1/report/roc.png").status_code == 200


def test_versions_are_listed_with_their_metrics(client: httpx.Client) -> None:
    body = client.get("/models/iris/versions").json()
    assert body["production"] == 1
    (only,) = body["versions"]
    assert only["version"] == 1
    assert only["production"] is True
    assert only["served"] is True
    assert "f1_macro" in only["metrics"]
    assert client.get("/models/nope/versions").status_code == 404


def test_the_store_reads_report_files_only(store: ModelStore) -> None:
    for outside in ("../manifest.json", "model.joblib", "", "report/roc.png", "."):
        with pytest.raises(ModelNotFoundError):
            store.report_file("iris", 1, outside)
    assert store.report_file("iris", 1, "roc.png").startswith(b"\x89PNG")


def test_an_absurd_version_number_is_a_clear_4xx(client: httpx.Client) -> None:
    answer = client.get(f"/models/iris/versions/{'9' * 300}/report/roc.png")
    assert answer.status_code == 422
    assert answer.json()["error"]["details"][0]["loc"][-1] == "version"

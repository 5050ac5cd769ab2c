"""The admin API on a real server over a signed store: auth, path safety, promote, rollback,
and a forged manifest that must never be executed."""

from __future__ import annotations

import http.client
import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from serving.store import MANIFEST_FILE, MODEL_FILE, ModelStore, sha256_file
from tests.serving.artifacts import malicious_pickle, publish_copy, set_production
from tests.serving.conftest import IRIS_ROW, RunningServer, quiet_settings, running_server
from training.run import train
from training.spec import shipped_spec

TOKEN = "admin-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
KEY = b"signing-key-for-tests"


def _quiet(_: str) -> None:
    """Echo sink for train()."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    signed = ModelStore(tmp_path_factory.mktemp("signed"), signing_key=KEY)
    train(shipped_spec("iris"), signed, echo=_quiet)
    return signed


@pytest.fixture(scope="module")
def live(store: ModelStore) -> Iterator[RunningServer]:
    settings = quiet_settings(
        store, pool_size=1, poll_interval_s=0, admin_token=TOKEN, signing_key=KEY.decode()
    )
    with running_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(live: RunningServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


def raw_request(url: str, method: str, path: str) -> tuple[int, bytes]:
    """Send ``path`` exactly as given (httpx would normalise ``..``)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request(method, path, body=b'{"rows": [[5.1, 3.5, 1.4, 0.2]]}', headers=AUTH)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_auth_missing_wrong_and_right_token(client: httpx.Client) -> None:
    missing = client.get("/admin/models/iris/versions")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "unauthorized"
    basic = client.get("/admin/models/iris/versions", headers={"authorization": "Basic YTpi"})
    assert basic.status_code == 401
    wrong = client.get("/admin/models/iris/versions", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert wrong.json()["error"]["type"] == "forbidden"
    # Auth comes before anything else: a wrong token learns nothing about names or versions.
    assert client.post("/admin/models/nope/promote/abc").status_code == 401
    right = client.get("/admin/models/iris/versions", headers=AUTH)
    assert right.status_code == 200
    body = right.json()
    assert body["default_version"] == 1
    assert [v["version"] for v in body["versions"]] == [1]
    assert body["versions"][0]["production"] is True
    assert body["versions"][0]["served"] is True


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("GET", "/admin/models/../versions", {400, 404}),
        ("GET", "/admin/models/%2e%2e/versions", {400}),
        ("GET", "/admin/models/%2E%2E/versions", {400}),
        ("GET", "/admin/models/..%2f..%2fetc/versions", {404}),
        ("GET", "/admin/models/%2Fetc%2Fpasswd/versions", {404}),
        ("GET", "/admin/models//etc/versions", {404}),
        ("POST", "/admin/models/.hidden/reload", {400}),
        ("POST", "/admin/models/%2e%2e/promote/1", {400}),
        ("POST", "/admin/models/%2e%2e/rollback", {400}),
        ("POST", "/admin/models/iris/promote/0", {422}),
        ("POST", "/admin/models/iris/promote/-1", {422}),
        ("POST", "/admin/models/iris/promote/..", {404, 422}),
        ("POST", "/admin/models/iris/promote/%2e%2e", {422}),
        ("POST", "/models/../predict", {404}),
        ("POST", "/models/%2e%2e/predict", {404}),
        ("POST", "/models/..%2f..%2fetc/predict", {404}),
        ("POST", "/models/%2e%2e/versions/1/predict", {404}),
        ("POST", "/models/iris/versions/%2e%2e/predict", {422}),
        ("POST", "/models//etc/passwd/predict", {404}),
    ],
)
def test_path_traversal_is_refused(
    live: RunningServer, method: str, path: str, statuses: set[int]
) -> None:
    status, body = raw_request(live.url, method, path)
    assert status in statuses, (status, body)
    assert "error" in json.loads(body)


def test_symlinked_model_directory_is_never_followed(
    client: httpx.Client, store: ModelStore, tmp_path: Path
) -> None:
    (store.root / "escape").symlink_to(store.root / "iris")
    try:
        response = client.get("/admin/models/escape/versions", headers=AUTH)
        assert response.status_code == 400
        assert "escapes the store root" in response.json()["error"]["message"]
        assert client.post("/admin/models/escape/reload", headers=AUTH).status_code == 400
        assert client.post("/models/escape/predict", json={"rows": [IRIS_ROW]}).status_code == 404
    finally:
        (store.root / "escape").unlink()


def test_unknown_model_version_and_nothing_to_roll_back(client: httpx.Client) -> None:
    assert client.get("/admin/models/nope/versions", headers=AUTH).status_code == 404
    assert client.post("/admin/models/nope/reload", headers=AUTH).status_code == 404
    missing = client.post("/admin/models/iris/promote/99", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "version_not_found"
    conflict = client.post("/admin/models/iris/rollback", headers=AUTH)
    assert conflict.status_code == 409
    assert "roll back" in conflict.json()["error"]["message"]


def test_promote_reload_and_rollback_return_the_new_state(
    client: httpx.Client, store: ModelStore
) -> None:
    new = publish_copy(store, "iris", store, "iris", 1)
    assert client.post("/models/iris/predict", json={"rows": [IRIS_ROW]}).json()["version"] == 1
    promoted = client.post(f"/admin/models/iris/promote/{new}", headers=AUTH)
    assert promoted.status_code == 200
    assert promoted.json() == {
        "name": "iris",
        "default_version": new,
        "served_versions": [new],
        "rejected": {},
    }
    assert client.post("/models/iris/predict", json={"rows": [IRIS_ROW]}).json()["version"] == new
    assert client.post("/admin/models/iris/reload", headers=AUTH).json()["default_version"] == new
    rolled = client.post("/admin/models/iris/rollback", headers=AUTH)
    assert rolled.status_code == 200
    assert rolled.json()["default_version"] == 1
    assert client.post("/models/iris/predict", json={"rows": [IRIS_ROW]}).json()["version"] == 1


def test_forged_manifest_is_refused_under_hmac_and_nothing_executes(
    client: httpx.Client, store: ModelStore, tmp_path: Path
) -> None:
    marker = tmp_path / "executed"
    probe = tmp_path / "probe"
    pickle.loads(malicious_pickle(probe))  # the payload is live...
    assert probe.exists()

    new = publish_copy(store, "iris", store, "iris", 1)
    version_dir = store.version_path("iris", new)
    (version_dir / MODEL_FILE).write_bytes(malicious_pickle(marker))
    # The attacker rewrites the manifest so the hash matches their file, but cannot sign it.
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    manifest["files"][MODEL_FILE] = sha256_file(version_dir / MODEL_FILE)
    manifest["onnx"] = None
    (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    refused = client.post(f"/admin/models/iris/promote/{new}", headers=AUTH)
    assert refused.status_code == 409
    assert "signature" in refused.json()["error"]["message"]

    set_production(store, "iris", new)
    reloaded = client.post("/admin/models/iris/reload", headers=AUTH)
    assert reloaded.status_code == 200
    assert "signature" in reloaded.json()["rejected"][str(new)]
    assert client.post("/models/iris/predict", json={"rows": [IRIS_ROW]}).json()["version"] == 1
    listed = client.get("/admin/models/iris/versions", headers=AUTH).json()["versions"]
    assert listed[-1]["version"] == new
    assert listed[-1]["production"] is True
    assert listed[-1]["served"] is False
    assert "signature" in listed[-1]["error"]
    assert not marker.exists()
    set_production(store, "iris", 1)
    assert client.post("/admin/models/iris/reload", headers=AUTH).json()["rejected"] == {}


def test_a_corrupt_history_is_a_409_naming_the_file(
    client: httpx.Client, store: ModelStore
) -> None:
    history = store.root / "iris" / "history.json"
    saved = history.read_bytes() if history.exists() else None
    production = store.production("iris")
    new = publish_copy(store, "iris", store, "iris", 1)
    history.write_text('{"not": "a list"}', encoding="utf-8")
    try:
        for path in (f"/admin/models/iris/promote/{new}", "/admin/models/iris/rollback"):
            response = client.post(path, headers=AUTH)
            assert response.status_code == 409, response.text
            message = response.json()["error"]["message"]
            assert f"rollback history {history} is corrupt" in message
        assert store.production("iris") == production
    finally:
        if saved is None:
            history.unlink()
        else:
            history.write_bytes(saved)


def test_a_signed_version_copied_to_another_number_is_refused(
    client: httpx.Client, store: ModelStore
) -> None:
    production = store.production("iris")
    assert production is not None
    copy = store.root / "iris" / str(max(store.versions("iris")) + 1)
    shutil.copytree(store.version_path("iris", 1), copy)
    try:
        refused = client.post(f"/admin/models/iris/promote/{copy.name}", headers=AUTH)
        assert refused.status_code == 409, refused.text
        assert "signature" in refused.json()["error"]["message"]
        set_production(store, "iris", int(copy.name))
        reloaded = client.post("/admin/models/iris/reload", headers=AUTH)
        assert "signature" in reloaded.json()["rejected"][copy.name]
        served = client.post("/models/iris/predict", json={"rows": [IRIS_ROW]})
        assert served.json()["version"] == production
    finally:
        shutil.rmtree(copy)
        set_production(store, "iris", production)
        client.post("/admin/models/iris/reload", headers=AUTH)

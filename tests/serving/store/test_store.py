from __future__ import annotations

import hmac
import json
import multiprocessing
import os
import pwd
import shutil
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from serving.store import (
    Environment,
    IntegrityError,
    InvalidNameError,
    ModelNotFoundError,
    ModelStore,
    StoreError,
)
from tests.serving.artifacts import SwapAfterHashing, malicious_pickle


def _fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "created": datetime.now(UTC),
        "task": "regression",
        "input_format": "ndarray",
        "features": [{"name": "x", "kind": "numeric", "min": 0, "max": 1, "mean": 0.5, "std": 0.1}],
        "target": {"name": "y"},
        "estimator": "sklearn.linear_model.Ridge",
        "metrics": {"rmse": 1.0},
        "primary_metric": "rmse",
        "higher_is_better": False,
        "spec": {},
        "data_fingerprint": "0" * 64,
        "n_train_rows": 8,
        "n_test_rows": 2,
        "environment": Environment(python="3.11", sklearn="1", numpy="2", joblib="1", pandas="2"),
    }
    fields.update(overrides)
    return fields


def _publish(store: ModelStore, name: str = "m", payload: bytes = b"model") -> int:
    with store.create_version(name, _fields()) as staged:
        staged.model_path.write_bytes(payload)
        (staged.report_dir / "model_card.md").write_text("# card")
    assert staged.version is not None
    return staged.version


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def test_versions_are_monotonic_and_hashed(store: ModelStore) -> None:
    assert _publish(store) == 1
    assert _publish(store, payload=b"other") == 2
    assert store.versions("m") == [1, 2]
    manifest = store.verify("m", 2)
    assert set(manifest.files) == {"model.joblib", "report/model_card.md"}
    assert manifest.name == "m"
    assert manifest.version == 2


def test_failed_write_leaves_nothing_visible(store: ModelStore) -> None:
    def crash_mid_write() -> None:
        with store.create_version("m", _fields()) as staged:
            staged.model_path.write_bytes(b"half")
            raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        crash_mid_write()
    assert store.versions("m") == []
    assert store.names() == []
    assert list((store.root / "m").iterdir()) == []


def test_invalid_manifest_fields_leave_nothing(store: ModelStore) -> None:
    with (
        pytest.raises(ValueError, match="task"),
        store.create_version("m", _fields(task="clustering")) as staged,
    ):
        staged.model_path.write_bytes(b"x")
    assert list((store.root / "m").iterdir()) == []


def test_staging_directories_are_invisible(store: ModelStore) -> None:
    _publish(store)
    (store.root / "m" / ".staging-leftover").mkdir()
    (store.root / "m" / "7").mkdir()  # a folder without a manifest is not a version
    assert store.versions("m") == [1]
    assert _publish(store) == 2


def test_tampered_artifact_fails_verification_naming_the_file(store: ModelStore) -> None:
    _publish(store)
    model = store.version_path("m", 1) / "model.joblib"
    model.write_bytes(b"evil")
    with pytest.raises(IntegrityError, match=r"sha256 of .*model\.joblib"):
        store.verify("m", 1)
    with pytest.raises(IntegrityError):
        store.load_model("m", 1)  # never unpickles a file that failed verification


def test_missing_artifact_fails_verification(store: ModelStore) -> None:
    _publish(store)
    os.unlink(store.version_path("m", 1) / "report" / "model_card.md")
    with pytest.raises(IntegrityError, match="missing"):
        store.verify("m", 1)


def test_promote_and_rollback_walk_the_history(store: ModelStore) -> None:
    for _ in range(3):
        _publish(store)
    assert store.production("m") is None
    assert store.promote("m", 1) is None
    assert store.promote("m", 2) == 1
    assert store.promote("m", 3) == 2
    assert store.rollback("m") == (3, 2)
    assert store.production("m") == 2
    assert store.rollback("m") == (2, 1)
    with pytest.raises(StoreError, match="no earlier production version"):
        store.rollback("m")
    assert store.production("m") == 1


def test_removed_versions_vanish_whole_and_rollback_targets_stay(store: ModelStore) -> None:
    for _ in range(4):
        _publish(store)
    store.promote("m", 2)
    store.promote("m", 3)
    assert store.previous_production("m") == 2
    for protected in (2, 3):
        with pytest.raises(StoreError, match=f"v{protected} is production or what rollback"):
            store.remove_versions("m", [1, protected])
    assert store.versions("m") == [1, 2, 3, 4]  # a refused call removes nothing

    store.remove_versions("m", [1, 4])

    assert store.versions("m") == [2, 3]
    model_dir = store.version_path("m", 2).parent
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".")]
    assert store.rollback("m") == (3, 2)


def test_promote_refuses_missing_or_tampered_versions(store: ModelStore) -> None:
    _publish(store)
    with pytest.raises(ModelNotFoundError):
        store.promote("m", 5)
    (store.version_path("m", 1) / "model.joblib").write_bytes(b"evil")
    with pytest.raises(IntegrityError):
        store.promote("m", 1)
    assert store.production("m") is None


def test_pointer_replacement_is_atomic_file_swap(store: ModelStore) -> None:
    _publish(store)
    _publish(store)
    store.promote("m", 1)
    pointer = store.root / "m" / "production"
    inode = pointer.stat().st_ino
    store.promote("m", 2)
    assert pointer.read_text() == "2\n"
    assert pointer.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert [p.name for p in (store.root / "m").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "..", ".hidden", "", "x" * 65])
def test_names_cannot_escape_the_store(store: ModelStore, name: str) -> None:
    with pytest.raises(InvalidNameError):
        store.versions(name)


def test_symlinked_model_directory_is_refused(store: ModelStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store.root.mkdir(parents=True)
    (store.root / "evil").symlink_to(outside)
    with pytest.raises(InvalidNameError, match="escapes"):
        store.versions("evil")
    assert store.names() == []


def test_manifest_listing_files_outside_the_version_is_refused(store: ModelStore) -> None:
    _publish(store)
    manifest_path = store.version_path("m", 1) / "manifest.json"
    manifest_path.write_text(
        manifest_path.read_text().replace('"report/model_card.md"', '"../../x"')
    )
    with pytest.raises(IntegrityError, match="outside its version"):
        store.verify("m", 1)


def test_signed_store_round_trip(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    _publish(store)
    assert (store.version_path("m", 1) / "manifest.sig").is_file()
    assert store.verify("m", 1).version == 1


def test_forged_manifest_is_refused_when_signing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    _publish(store)
    vdir = store.version_path("m", 1)
    # An attacker swaps the model and rewrites the manifest's hash to match it.
    (vdir / "model.joblib").write_bytes(b"evil")
    manifest = store.manifest("m", 1)
    forged = manifest.model_copy(update={"files": {**manifest.files, "model.joblib": "0" * 64}})
    (vdir / "manifest.json").write_text(forged.model_dump_json())
    with pytest.raises(IntegrityError, match=r"signature .*manifest\.sig does not match"):
        store.verify("m", 1)
    # The key holder is the only one who can sign: another key is refused too.
    with pytest.raises(IntegrityError, match="does not match"):
        ModelStore(tmp_path / "s", signing_key=b"other").verify("m", 1)


def test_unsigned_version_is_refused_when_a_key_is_set(tmp_path: Path) -> None:
    _publish(ModelStore(tmp_path / "s"))
    with pytest.raises(IntegrityError, match="is not signed"):
        ModelStore(tmp_path / "s", signing_key=b"k1").load_model("m", 1)


def test_rollback_of_an_unknown_model_says_so(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        store.rollback("nope")


def test_a_file_swapped_after_hashing_is_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import joblib

    import serving.store.artifact

    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    with store.create_version("m", _fields()) as staged:
        joblib.dump({"the": "original"}, staged.model_path)
    marker = tmp_path / "executed"
    hook = SwapAfterHashing(store.version_path("m", 1) / "model.joblib", malicious_pickle(marker))
    monkeypatch.setattr(serving.store.artifact, "hashlib", hook)
    _, model = store.load_model("m", 1)
    assert hook.swapped == 1  # the file was replaced right after it was hashed
    assert not marker.exists()
    assert model == {"the": "original"}


# -- parsing store entries strictly -------------------------------------------------------------


@pytest.mark.parametrize("folder", ["²", "01", "\u0663", "0"])
def test_a_version_folder_that_only_looks_like_a_number_is_a_store_error(
    store: ModelStore, folder: str
) -> None:
    _publish(store)
    shutil.copytree(store.version_path("m", 1), store.root / "m" / folder)
    with pytest.raises(StoreError, match="not a valid version folder name"):
        store.versions("m")
    assert store.names() == ["m"]  # listed, so that its problem is reported


@pytest.mark.parametrize("text", ["²\n", "+2\n", "-1\n", "02\n", "2 3\n", "", "0\n", "\u0661\n"])
def test_a_production_pointer_that_is_not_a_plain_number_is_corrupt(
    store: ModelStore, text: str
) -> None:
    _publish(store)
    (store.root / "m" / "production").write_text(text, encoding="utf-8")
    with pytest.raises(StoreError, match=r"production pointer .* is corrupt"):
        store.production("m")


@pytest.mark.parametrize("text", ["{", "[1, 'x']", '["1"]', "[1, true]", '{"a": 1}', "[0]"])
def test_a_corrupt_history_stops_promote_and_rollback_naming_the_file(
    store: ModelStore, text: str
) -> None:
    for _ in range(3):
        _publish(store)
    store.promote("m", 1)
    store.promote("m", 2)
    (store.root / "m" / "history.json").write_text(text, encoding="utf-8")
    with pytest.raises(StoreError, match=r"rollback history .*history\.json is corrupt"):
        store.promote("m", 3)
    with pytest.raises(StoreError, match=r"history\.json is corrupt"):
        store.rollback("m")
    assert store.production("m") == 2


# -- what a signature binds, and symlinks --------------------------------------------------------


@pytest.mark.parametrize("key", [None, b"k1"])
def test_a_version_copied_to_another_number_is_refused(tmp_path: Path, key: bytes | None) -> None:
    store = ModelStore(tmp_path / "s", signing_key=key)
    _publish(store)
    shutil.copytree(store.version_path("m", 1), store.root / "m" / "5")
    assert store.versions("m") == [1, 5]
    expected = r"signature .* does not match" if key else "describes m v1"
    with pytest.raises(IntegrityError, match=expected):
        store.verify("m", 5)
    with pytest.raises(IntegrityError):
        store.promote("m", 5)


def test_a_signed_version_copied_to_another_model_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    _publish(store)
    _publish(store, name="other")
    shutil.rmtree(store.root / "other" / "1")
    shutil.copytree(store.version_path("m", 1), store.root / "other" / "1")
    with pytest.raises(IntegrityError, match="does not match"):
        store.verify("other", 1)


def test_a_symlinked_version_folder_is_refused(store: ModelStore, tmp_path: Path) -> None:
    _publish(store)
    outside = tmp_path / "outside"
    shutil.copytree(store.version_path("m", 1), outside)
    (store.root / "m" / "2").symlink_to(outside)
    assert store.versions("m") == [1, 2]  # listed, and refused when read
    with pytest.raises(IntegrityError, match="symbolic link"):
        store.verify("m", 2)
    with pytest.raises(IntegrityError, match="symbolic link"):
        store.manifest("m", 2)


@pytest.mark.parametrize("rel", ["model.joblib", "report", "manifest.json"])
def test_a_symlinked_file_inside_a_version_is_refused(
    store: ModelStore, tmp_path: Path, rel: str
) -> None:
    _publish(store)
    inside = store.version_path("m", 1) / rel
    outside = tmp_path / "outside"
    (shutil.copytree if inside.is_dir() else shutil.copyfile)(inside, outside)
    (shutil.rmtree if inside.is_dir() else os.unlink)(inside)
    inside.symlink_to(outside)  # same content: only the link is wrong
    with pytest.raises(IntegrityError, match="symbolic link"):
        store.verify("m", 1)


@pytest.mark.parametrize("rel", ["production", "history.json"])
def test_a_symlinked_pointer_or_history_is_refused(
    store: ModelStore, tmp_path: Path, rel: str
) -> None:
    for _ in range(2):
        _publish(store)
    store.promote("m", 1)
    store.promote("m", 2)
    path = store.root / "m" / rel
    outside = tmp_path / "outside"
    shutil.copyfile(path, outside)
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(StoreError, match="symbolic link"):
        store.rollback("m")


def _sign_old_format(store: ModelStore, key: bytes, version: int) -> None:
    vdir = store.version_path("m", version)
    digest = hmac.new(key, (vdir / "manifest.json").read_bytes(), "sha256").hexdigest()
    (vdir / "manifest.sig").write_text(digest + "\n", encoding="ascii")


def test_an_old_format_signature_is_refused_until_re_signed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    _publish(store)
    _publish(store)
    _sign_old_format(store, b"k1", 1)
    _sign_old_format(store, b"not-the-key", 2)
    with pytest.raises(IntegrityError, match=r"old format.*python -m training sign"):
        store.verify("m", 1)
    assert store.resign("m", 1) is True
    assert store.verify("m", 1).version == 1
    assert store.resign("m", 1) is False  # already in the current format
    with pytest.raises(IntegrityError, match="not a valid signature"):
        store.resign("m", 2)  # never blesses what the key did not sign
    with pytest.raises(IntegrityError):
        store.verify("m", 2)


# -- the pointer lock, and file modes -------------------------------------------------------------


def _promote_alternately(root: str, rounds: int) -> list[tuple[int, int | None]]:
    store = ModelStore(root)
    out = []
    for i in range(rounds):
        version = 1 + i % 2
        out.append((version, store.promote("m", version)))
    return out


def test_concurrent_promotes_lose_no_history_entry(store: ModelStore) -> None:
    _publish(store)
    _publish(store)
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        results = pool.starmap(_promote_alternately, [(str(store.root), 40)] * 4)
    changes = sum(1 for run in results for v, prev in run if prev is not None and prev != v)
    history = json.loads((store.root / "m" / "history.json").read_text())
    assert len(history) == changes


def test_files_the_store_writes_follow_the_umask(store: ModelStore) -> None:
    old = os.umask(0o027)
    try:
        _publish(store)
        _publish(store)
        store.promote("m", 1)
        store.promote("m", 2)
    finally:
        os.umask(old)
    model_dir = store.root / "m"
    for rel in ["production", "history.json", "pointer.lock", "1/manifest.json"]:
        assert stat.S_IMODE((model_dir / rel).stat().st_mode) == 0o640, rel
    for rel in [".", "1", "1/report"]:
        assert stat.S_IMODE((model_dir / rel).stat().st_mode) == 0o750, rel


def test_a_store_written_by_root_is_served_to_another_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to write as one user and read as another (nobody)")
    import joblib

    root = Path(tempfile.mkdtemp(prefix="servewell-store-"))  # tmp_path's parents are 0700
    try:
        root.chmod(0o755)
        old = os.umask(0o022)
        try:
            store = ModelStore(root / "s")
            for payload in ({"v": 1}, {"v": 2}):
                with store.create_version("m", _fields()) as staged:
                    joblib.dump(payload, staged.model_path)
            store.promote("m", 1)
            store.promote("m", 2)
        finally:
            os.umask(old)
        joblib.load(store.version_path("m", 2) / "model.joblib")  # imports done as root
        # A forked child dropping to nobody: the interpreter itself may lie in a folder only
        # root can enter, so a fresh process as nobody could not even start.
        nobody = pwd.getpwnam("nobody")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            code = 1
            try:
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                reader = ModelStore(store.root)
                version = reader.production("m")
                assert version is not None
                answer = (version, reader.load_model("m", version)[1], reader._history("m"))
                code = 0
            except BaseException as exc:
                answer = exc  # type: ignore[assignment]
            finally:
                os.write(write, repr(answer).encode())
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as fh:
            said = fh.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, said
        assert said == "(2, {'v': 2}, [1])"
    finally:
        shutil.rmtree(root)

"""ModelStore: reading and verifying versions, signatures, re-signing, removal, file modes."""

from __future__ import annotations

import hmac
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from serving.store import (
    IntegrityError,
    ModelStore,
    StoreError,
)
from tests.serving.artifacts import SwapAfterHashing, malicious_pickle
from tests.serving.store.minimal import fields, publish


def test_tampered_artifact_fails_verification_naming_the_file(store: ModelStore) -> None:
    publish(store)
    model = store.version_path("m", 1) / "model.joblib"
    model.write_bytes(b"evil")
    with pytest.raises(IntegrityError, match=r"sha256 of .*model\.joblib"):
        store.verify("m", 1)
    with pytest.raises(IntegrityError):
        store.load_model("m", 1)  # never unpickles a file that failed verification


def test_missing_artifact_fails_verification(store: ModelStore) -> None:
    publish(store)
    os.unlink(store.version_path("m", 1) / "report" / "model_card.md")
    with pytest.raises(IntegrityError, match="missing"):
        store.verify("m", 1)


def test_removed_versions_vanish_whole_and_rollback_targets_stay(store: ModelStore) -> None:
    for _ in range(4):
        publish(store)
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


def test_manifest_listing_files_outside_the_version_is_refused(store: ModelStore) -> None:
    publish(store)
    manifest_path = store.version_path("m", 1) / "manifest.json"
    manifest_path.write_text(
        manifest_path.read_text().replace('"report/model_card.md"', '"../../x"')
    )
    with pytest.raises(IntegrityError, match="outside its version"):
        store.verify("m", 1)


def test_signed_store_round_trip(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    publish(store)
    assert (store.version_path("m", 1) / "manifest.sig").is_file()
    assert store.verify("m", 1).version == 1


def test_forged_manifest_is_refused_when_signing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    publish(store)
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
    publish(ModelStore(tmp_path / "s"))
    with pytest.raises(IntegrityError, match="is not signed"):
        ModelStore(tmp_path / "s", signing_key=b"k1").load_model("m", 1)


def test_a_file_swapped_after_hashing_is_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import joblib

    import serving.store.artifact

    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    with store.create_version("m", fields()) as staged:
        joblib.dump({"the": "original"}, staged.model_path)
    marker = tmp_path / "executed"
    hook = SwapAfterHashing(store.version_path("m", 1) / "model.joblib", malicious_pickle(marker))
    monkeypatch.setattr(serving.store.artifact, "hashlib", hook)
    _, model = store.load_model("m", 1)
    assert hook.swapped == 1  # the file was replaced right after it was hashed
    assert not marker.exists()
    assert model == {"the": "original"}


# -- what a signature binds, and symlinks --------------------------------------------------------


@pytest.mark.parametrize("key", [None, b"k1"])
def test_a_version_copied_to_another_number_is_refused(tmp_path: Path, key: bytes | None) -> None:
    store = ModelStore(tmp_path / "s", signing_key=key)
    publish(store)
    shutil.copytree(store.version_path("m", 1), store.root / "m" / "5")
    assert store.versions("m") == [1, 5]
    expected = r"signature .* does not match" if key else "describes m v1"
    with pytest.raises(IntegrityError, match=expected):
        store.verify("m", 5)
    with pytest.raises(IntegrityError):
        store.promote("m", 5)


def test_a_signed_version_copied_to_another_model_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    publish(store)
    publish(store, name="other")
    shutil.rmtree(store.root / "other" / "1")
    shutil.copytree(store.version_path("m", 1), store.root / "other" / "1")
    with pytest.raises(IntegrityError, match="does not match"):
        store.verify("other", 1)


@pytest.mark.parametrize("rel", ["model.joblib", "report", "manifest.json"])
def test_a_symlinked_file_inside_a_version_is_refused(
    store: ModelStore, tmp_path: Path, rel: str
) -> None:
    publish(store)
    inside = store.version_path("m", 1) / rel
    outside = tmp_path / "outside"
    (shutil.copytree if inside.is_dir() else shutil.copyfile)(inside, outside)
    (shutil.rmtree if inside.is_dir() else os.unlink)(inside)
    inside.symlink_to(outside)  # same content: only the link is wrong
    with pytest.raises(IntegrityError, match="symbolic link"):
        store.verify("m", 1)


def _sign_old_format(store: ModelStore, key: bytes, version: int) -> None:
    vdir = store.version_path("m", version)
    digest = hmac.new(key, (vdir / "manifest.json").read_bytes(), "sha256").hexdigest()
    (vdir / "manifest.sig").write_text(digest + "\n", encoding="ascii")


def test_an_old_format_signature_is_refused_until_re_signed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    publish(store)
    publish(store)
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


# -- file modes ----------------------------------------------------------------------------------


def test_files_the_store_writes_follow_the_umask(store: ModelStore) -> None:
    old = os.umask(0o027)
    try:
        publish(store)
        publish(store)
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
                with store.create_version("m", fields()) as staged:
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

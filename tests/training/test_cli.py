"""The `python -m training` CLI that the Makefile wraps, run as a user would."""

from __future__ import annotations

import hmac
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from serving.store import ModelStore


def run(
    store: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        env={**os.environ, "SERVEWELL_STORE": str(store), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        check=False,
    )


def test_train_models_promote_rollback(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = run(store, "train", "--model", "iris")
    assert first.returncode == 0, first.stderr
    assert "[iris] v1 is now production" in first.stdout
    same = run(store, "train", "--model", "iris")
    assert same.returncode == 0, same.stderr
    assert "identical to production v1" in same.stdout
    assert ModelStore(store).versions("iris") == [1]
    second = run(store, "train", "--model", "iris", "--force")
    assert second.returncode == 0, second.stderr

    listing = run(store, "models")
    assert listing.returncode == 0
    lines = [line.split() for line in listing.stdout.splitlines() if line.startswith("iris")]
    assert [line[1] for line in lines] == ["1", "2"]
    assert lines[1][2] == "*"  # v2 is production
    assert "f1_macro=" in listing.stdout

    rolled = run(store, "rollback", "iris")
    assert rolled.returncode == 0, rolled.stderr
    assert "from v2 to v1" in rolled.stdout
    assert ModelStore(store).production("iris") == 1

    promoted = run(store, "promote", "iris", "2")
    assert promoted.returncode == 0
    assert "production is now v2 (was v1)" in promoted.stdout

    compared = run(store, "compare", "iris")
    assert compared.returncode == 0, compared.stderr
    assert "v1" in compared.stdout
    assert "v2 (production)" in compared.stdout
    assert "v2 vs v1:" in compared.stdout
    pruned = run(store, "prune", "iris", "--keep", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert "kept v1, v2" in pruned.stdout  # v1 is the previous production

    missing = run(store, "promote", "iris", "9")
    assert missing.returncode == 1
    assert "error: model 'iris' has no version 9" in missing.stderr


def test_adhoc_csv_infers_the_task(tmp_path: Path) -> None:
    csv = tmp_path / "houses.csv"
    rows = "\n".join(
        f"{i},{i % 7},{'old' if i % 3 else 'new'},{i * 1.5 + (i % 7) * 0.3}" for i in range(60)
    )
    csv.write_text("area,rooms,age,price\n" + rows + "\n")
    result = run(tmp_path / "store", "train", "--data", str(csv), "--target", "price")
    assert result.returncode == 0, result.stderr
    assert "ad-hoc regression" in result.stdout
    manifest = ModelStore(tmp_path / "store").manifest("houses", 1)
    assert manifest.task == "regression"
    assert manifest.input_format == "dataframe"


def test_bad_input_exits_non_zero_with_message_and_writes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = run(store, "train", "--data", str(tmp_path / "missing.csv"), "--target", "y")
    assert result.returncode == 1
    assert "data file not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not store.exists() or not any(store.iterdir())

    result = run(store, "train", "--model", "nope")
    assert result.returncode == 1
    assert "no shipped spec named 'nope'" in result.stderr


def test_not_promoted_run_explains_how_to_force(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert run(store, "train", "--model", "iris").returncode == 0
    weak = tmp_path / "weak.toml"
    spec_dir = Path(__file__).resolve().parents[2] / "training" / "specs"
    weak.write_text((spec_dir / "iris.toml").read_text().replace("C = 1.0", "C = 0.0005"))
    result = run(store, "train", "--spec", str(weak))
    assert result.returncode == 3, result.stderr
    assert "stored but NOT promoted" in result.stdout
    assert "make promote MODEL=iris VERSION=2" in result.stdout
    assert f"make train SPEC={weak} FORCE=1" in result.stdout


def test_useless_model_exits_3_against_its_baseline(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = [f"{a:.5f},{b:.5f},{'yes' if c < 0.7 else 'no'}" for a, b, c in rng.random((120, 3))]
    csv = tmp_path / "noise.csv"
    csv.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    store = tmp_path / "store"
    args = ["train", "--data", str(csv), "--target", "label", "--estimator", "extra_trees"]
    result = run(store, *args)
    assert result.returncode == 3, result.stderr
    assert "not better than the trivial baseline" in result.stdout
    assert f"make train DATA={csv} TARGET=label ESTIMATOR=extra_trees FORCE=1" in result.stdout
    assert ModelStore(store).production("noise") is None
    assert ModelStore(store).manifest("noise", 1).estimator.endswith("ExtraTreesClassifier")

    forced = run(store, *args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert ModelStore(store).production("noise") == 2


def test_unknown_estimator_name_lists_the_known_ones(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("x,y\n" + "".join(f"{i},{i * 0.5}\n" for i in range(30)))
    result = run(
        tmp_path / "store", "train", "--data", str(csv), "--target", "y", "--estimator", "svm"
    )
    assert result.returncode == 1
    assert "unknown estimator 'svm' for regression" in result.stderr
    assert "linear_regression, ridge" in result.stderr


def test_ensure_default_trains_only_an_empty_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = run(store, "ensure-default")
    assert first.returncode == 0, first.stderr
    assert set(ModelStore(store).names()) >= {"iris", "breast_cancer", "diabetes", "churn"}
    again = run(store, "ensure-default")
    assert again.returncode == 0
    assert "has models" in again.stdout
    assert ModelStore(store).versions("iris") == [1]


def test_an_empty_signing_key_is_a_clear_error(tmp_path: Path) -> None:
    result = run(tmp_path / "store", "models", env={"SERVEWELL_SIGNING_KEY": ""})
    assert result.returncode == 1
    assert "SERVEWELL_SIGNING_KEY is set but empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_history_and_re_signing_old_signatures(tmp_path: Path) -> None:
    store = tmp_path / "store"
    key = {"SERVEWELL_SIGNING_KEY": "k1"}
    assert run(store, "train", "--model", "iris", env=key).returncode == 0
    assert run(store, "train", "--model", "iris", "--force", env=key).returncode == 0
    history = store / "iris" / "history.json"
    history.write_text("[1, oops", encoding="utf-8")
    for args in (["promote", "iris", "1"], ["rollback", "iris"]):
        result = run(store, *args, env=key)
        assert result.returncode == 1
        assert f"rollback history {history} is corrupt" in result.stderr
        assert "Traceback" not in result.stderr
    history.write_text("[1]\n", encoding="utf-8")

    # A store signed before signatures named their model and version:
    version = store / "iris" / "1"
    old = hmac.new(b"k1", (version / "manifest.json").read_bytes(), "sha256").hexdigest()
    (version / "manifest.sig").write_text(old + "\n", encoding="ascii")
    assert "python -m training sign" in run(store, "models", env=key).stdout
    signed = run(store, "sign", env=key)
    assert signed.returncode == 0, signed.stderr
    assert "[iris] v1 re-signed" in signed.stdout
    assert "[iris] v2 already signed" in signed.stdout
    assert ModelStore(store, signing_key=b"k1").verify("iris", 1).version == 1
    other = run(store, "sign", env={"SERVEWELL_SIGNING_KEY": "not-the-key"})
    assert other.returncode == 1
    assert "NOT re-signed" in other.stderr


def test_train_from_capture_and_export_capture(tmp_path: Path) -> None:
    from tests.training.traffic import write_iris_traffic

    store = tmp_path / "store"
    assert run(store, "train", "--model", "iris").returncode == 0
    url = f"sqlite:///{tmp_path / 'traffic.sqlite'}"
    env = {"SERVEWELL_CAPTURE_URL": url}
    missing = run(store, "train", "--model", "iris", "--from", "capture", env=env)
    assert missing.returncode == 1
    assert "[iris] error: no capture database at" in missing.stderr

    write_iris_traffic(ModelStore(store), url, labelled=20, unlabelled=40)
    few = run(store, "train", "--model", "iris", "--from", "capture", env=env)
    assert few.returncode == 1
    assert "only 20 usable labelled captured rows" in few.stderr
    assert ModelStore(store).versions("iris") == [1]

    write_iris_traffic(ModelStore(store), url, labelled=200)  # the same request ids, relabelled
    trained = run(store, "train", "--model", "iris", "--from", "capture", env=env)
    assert trained.returncode == 0, trained.stderr
    assert "Traffic: 200 labelled captured rows" in trained.stdout  # 60 duplicates dropped
    assert "[iris] v2 is now production" in trained.stdout
    assert ModelStore(store).manifest("iris", 2).spec["capture"]["use"] == "only"

    out = tmp_path / "iris.csv"
    exported = run(store, "export-capture", "iris", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    # The first 60 rows share request ids with the later ones, so their labels too.
    assert "260 captured rows (260 labelled)" in exported.stdout
    assert len(out.read_text().splitlines()) == 261
    bad = run(store, "export-capture", "iris", str(tmp_path / "iris.parquet"), env=env)
    if bad.returncode:
        assert "error: Parquet export needs pyarrow" in bad.stderr


def test_shadow_canary_and_traffic_commands(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert run(store, "train", "--model", "iris").returncode == 0
    assert run(store, "train", "--model", "iris", "--force").returncode == 0
    assert run(store, "rollback", "iris").returncode == 0  # production v1, candidate v2

    shown = run(store, "traffic", "iris")
    assert shown.returncode == 0
    assert "production v1 answers alone" in shown.stdout
    shadow = run(store, "shadow", "iris", "2", "--sample", "0.5")
    assert shadow.returncode == 0, shadow.stderr
    assert "shadow: v2 sees 50% of requests" in shadow.stdout
    canary = run(store, "canary", "iris", "2", "--weight", "10")
    assert canary.returncode == 0, canary.stderr
    assert "canary: v1 90.0%, v2 10.0%" in canary.stdout
    policy = ModelStore(store).traffic("iris")
    assert policy is not None
    assert policy.weights == ((1, 0.9), (2, 0.1))

    bad = run(store, "canary", "iris", "2", "--weight", "100")
    assert bad.returncode == 1
    assert "weight: a canary's weight is a percentage" in bad.stderr
    missing = run(store, "shadow", "iris", "7")
    assert missing.returncode == 1
    assert "error:" in missing.stderr
    assert ModelStore(store).traffic("iris") == policy  # refused: the old policy stays

    ended = run(store, "traffic", "iris", "--end")
    assert ended.returncode == 0
    assert "experiment ended" in ended.stdout
    assert ModelStore(store).traffic("iris") is None


def test_store_commands_start_without_the_training_libraries(tmp_path: Path) -> None:
    """Listing, promoting, rolling back, pruning and traffic touch only the store: they import
    neither pandas, scikit-learn, SciPy, ONNX Runtime nor numpy (about a second of start-up)."""
    store = tmp_path / "store"
    assert run(store, "train", "--model", "iris").returncode == 0
    assert run(store, "train", "--model", "iris", "--force").returncode == 0
    commands = [
        ["models"],
        ["rollback", "iris"],
        ["promote", "iris", "2"],
        ["shadow", "iris", "1"],
        ["traffic", "iris", "--end"],
        ["prune", "iris", "--keep", "2"],
        ["promote", "iris", "9"],  # a user error, caught: still nothing heavy
    ]
    script = (
        "import sys\n"
        "from training.cli import main\n"
        f"codes = [main(argv) for argv in {commands!r}]\n"
        "heavy = {'pandas', 'sklearn', 'scipy', 'onnxruntime', 'numpy'}\n"
        "print('CODES', codes)\n"
        "print('LOADED', sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "SERVEWELL_STORE": str(store)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "CODES [0, 0, 0, 0, 0, 0, 1]" in done.stdout
    assert "LOADED []" in done.stdout
    assert "production is now v2 (was v1)" in done.stdout
    assert "shadow: v1 sees 100% of requests" in done.stdout

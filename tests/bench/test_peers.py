import json
from pathlib import Path

from bench import peers, peers_report
from serving.store import ModelStore


def test_plan_puts_the_two_servers_next_to_each_other_and_overload_last() -> None:
    keys = [s.key for s in peers.plan(["iris", "breast_cancer"], [100, 1000])]
    assert keys == [
        "servewell/iris/row/c100",
        "mlserver/iris/row/c100",
        "servewell/breast_cancer/row/c100",
        "mlserver/breast_cancer/row/c100",
        "servewell/iris/row/c1000",
        "mlserver/iris/row/c1000",
        "servewell/breast_cancer/row/c1000",
        "mlserver/breast_cancer/row/c1000",
    ]


def test_bodies_carry_the_same_rows_to_both_servers(store: ModelStore, tmp_path: Path) -> None:
    bodies = peers.prepare_bodies(store, {"iris": 1}, 20, tmp_path)
    ours = bodies.files[(peers_report.SERVEWELL, "iris")].read_text().splitlines()
    theirs = bodies.files[(peers_report.MLSERVER, "iris")].read_text().splitlines()
    assert len(ours) == len(theirs) == 20
    for row, our, their in zip(bodies.rows["iris"], ours, theirs, strict=True):
        assert list(json.loads(our)["instances"][0].values()) == row
        assert json.loads(their)["inputs"][0]["data"] == row
    assert len({tuple(r) for r in bodies.rows["iris"]}) == 20  # every body differs


def test_quick_and_default_lengths() -> None:
    args = peers.parse_args([])
    assert (args.rounds, args.duration, args.connections) == (3, 5.0, [100, 1000])
    assert (peers.parse_args(["--quick"]).rounds, peers.parse_args(["--quick"]).duration) == (
        1,
        3.0,
    )


def test_missing_venv_is_reported_before_anything_starts(tmp_path: Path) -> None:
    args = peers.parse_args(["--venv", str(tmp_path / "none")])
    problem = peers._preconditions(args)
    assert problem is not None
    assert "make bench-peers" in problem

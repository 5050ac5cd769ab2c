"""Drift arithmetic on a really trained model's manifest: ranges, window, PSI."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_iris

from serving.observe.drift import LARGE_BATCH_VALUES, DriftTracker, ModelDrift
from serving.store import ModelStore


def test_training_bins_hold_the_training_distribution(trained_store: ModelStore) -> None:
    manifest = trained_store.manifest("iris", 1)
    for feature in manifest.features:
        assert feature.bin_edges is not None
        assert feature.bin_shares is not None
        assert len(feature.bin_shares) == len(feature.bin_edges) + 1
        assert abs(sum(feature.bin_shares) - 1) < 1e-9
        assert feature.bin_edges == sorted(set(feature.bin_edges))


def test_psi_is_small_for_training_like_data_and_large_for_shifted(
    trained_store: ModelStore,
) -> None:
    manifest = trained_store.manifest("iris", 1)
    data = load_iris().data
    model = ModelDrift(manifest, window_rows=1000)
    model.append(data)
    same = {f["name"]: f for f in model.report(model.window[: model.filled])["features"]}
    shifted_model = ModelDrift(manifest, window_rows=1000)
    shifted_model.append(data + np.array([0.0, 0.0, 2.0, 0.0]))
    window = shifted_model.window[: shifted_model.filled]
    shifted = {f["name"]: f for f in shifted_model.report(window)["features"]}
    for name, entry in same.items():
        assert entry["psi"] < 0.1, name  # the training split is most of this data
    assert shifted["petal_length_cm"]["psi"] > 0.25
    assert shifted["sepal_length_cm"]["psi"] < 0.1
    assert shifted["petal_length_cm"]["out_of_range_share"] > 0


def test_window_keeps_the_most_recent_rows(trained_store: ModelStore) -> None:
    model = ModelDrift(trained_store.manifest("iris", 1), window_rows=5)
    for i in range(7):
        model.append(np.full((1, 4), float(i)))
    assert model.filled == 5
    assert sorted(model.window[:, 0].tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    model.append(np.arange(40.0).reshape(10, 4))
    assert model.window[:, 0].tolist() == [20.0, 24.0, 28.0, 32.0, 36.0]


def test_out_of_range_warnings_and_counts(trained_store: ModelStore) -> None:
    manifest = trained_store.manifest("iris", 1)
    counted: list[tuple[str, list[int], int]] = []
    tracker = DriftTracker(
        100, lambda key, names, counts, rows: counted.append((key[0], counts.tolist(), rows))
    )
    model = tracker.track(manifest)
    inside = np.array([[5.1, 3.5, 1.4, 0.2]])
    far = np.array([[5.1, 3.5, 100.0, -1.0], [5.1, 3.5, 1.4, 0.2]])
    nan_row = np.array([[np.nan, 3.5, 1.4, 0.2]])
    assert model.flagged(inside) == []
    assert model.out_of_range(inside) == []
    assert model.flagged(far) == [0]
    assert model.flagged(far[:1]) == [0]
    assert model.flagged(np.concatenate([inside, far[::-1], far])) == [2, 3]
    warnings = model.out_of_range(far)
    assert [w.split()[0] for w in warnings] == ["petal_length_cm", "petal_width_cm"]
    assert model.flagged(nan_row) == [] == model.out_of_range(nan_row)  # missing: in range
    assert model.flagged(np.concatenate([nan_row, inside])) == []
    many = np.repeat(np.concatenate([inside, nan_row]), 10, axis=0)  # past the Python loop
    assert model.flagged(many) == []
    many[[3, 17]] = far[0]
    assert model.flagged(many) == [3, 17]
    for rows in (inside, far, far[:1], nan_row):
        tracker.queue(model, rows)
    tracker.process(tracker.take())
    assert counted == [("iris", [0, 0, 2, 2], 5)]


def test_values_exactly_at_the_training_bounds_are_in_range(trained_store: ModelStore) -> None:
    manifest = trained_store.manifest("iris", 1)
    lo = np.array([f.min for f in manifest.features], dtype=float)
    hi = np.array([f.max for f in manifest.features], dtype=float)
    counted: list[list[int]] = []
    tracker = DriftTracker(100, lambda key, names, counts, rows: counted.append(counts.tolist()))
    model = tracker.track(manifest)
    bounds = np.array([lo, hi])
    # Each size takes another path: the per-value loop (up to 32 values), numpy beyond it,
    # and out_of_range's single-row shortcut.
    for rows in (lo[None, :], hi[None, :], bounds, np.tile(bounds, (20, 1))):
        assert model.flagged(rows) == [], rows
        assert model.out_of_range(rows) == [], rows
        tracker.queue(model, rows)
    tracker.process(tracker.take())
    assert counted == [[0, 0, 0, 0]]
    # A batch that misses numpy's all-in-range shortcut: only the far row is flagged.
    mixed = np.tile(bounds, (20, 1))
    mixed[7] = hi + 1
    assert model.flagged(mixed) == [7]
    report = model.report(model.window[: model.filled])
    assert [f["out_of_range_share"] for f in report["features"]] == [0.0] * 4

    below = np.nextafter(lo, -np.inf)
    above = np.nextafter(hi, np.inf)
    for i in range(4):  # one feature just outside at a time, on either side
        for outside in (below, above):
            row = lo.copy()
            row[i] = outside[i]
            rows = row[None, :]
            assert model.flagged(rows) == [0]
            assert model.flagged(np.tile(rows, (20, 1))) == list(range(20))
            assert [w.split()[0] for w in model.out_of_range(rows)] == [model.names[i]]
            pair = np.array([lo, row])
            assert [w.split()[0] for w in model.out_of_range(pair)] == [model.names[i]]
            tracker.queue(model, rows)
    tracker.process(tracker.take())
    assert counted[1:] == [[2, 2, 2, 2]]


def test_large_batches_are_counted_when_sent_small_ones_in_the_background_pass(
    trained_store: ModelStore,
) -> None:
    manifest = trained_store.manifest("iris", 1)
    counted: list[tuple[list[int], int]] = []
    tracker = DriftTracker(
        2000, lambda key, names, counts, rows: counted.append((counts.tolist(), rows))
    )
    model = tracker.track(manifest)
    inside = np.array([5.1, 3.5, 1.4, 0.2])
    large = np.tile(inside, (LARGE_BATCH_VALUES // 4, 1))
    large[[5, 900]] = [[5.1, 3.5, 100.0, -1.0], [np.nan, 3.5, 1.4, 50.0]]
    assert tracker.sent(model, large, warn=True) == [5, 900]
    assert tracker.take() == {}  # nothing held for later: counted and windowed already
    assert model.filled == len(large)
    assert tracker.sent(model, large, warn=False) == []
    small = large[:3]
    assert tracker.sent(model, small, warn=True) == []
    assert tracker.sent(model, large[4:7], warn=True) == [1]
    assert model.filled == 2000  # the small batches wait for the pass
    tracker.process(tracker.take())
    rows = 2 * len(large) + 6
    assert counted == [([0, 0, 2 + 1, 2 * 2 + 1], rows)]  # row 5 again in large[4:7]
    assert model.rows_seen == rows
    np.testing.assert_array_equal(model.window[model.position - 3 : model.position], large[4:7])
    tracker.process(tracker.take())
    assert len(counted) == 1  # nothing new: nothing reported


def test_a_forgotten_version_reports_what_it_counted_last(trained_store: ModelStore) -> None:
    counted: list[tuple[str, int, int]] = []
    tracker = DriftTracker(
        100, lambda key, names, counts, rows: counted.append((key[0], int(counts.sum()), rows))
    )
    model = tracker.track(trained_store.manifest("iris", 1))
    far = np.tile([5.1, 3.5, 100.0, 0.2], (LARGE_BATCH_VALUES // 4, 1))
    tracker.sent(model, far, warn=False)  # counted when sent
    tracker.forget(set())
    assert counted == [("iris", len(far), len(far))]
    tracker.sent(model, far[:2], warn=False)  # queued, then the version is swapped out
    tracker.forget(set())
    tracker.process(tracker.take())
    assert counted[1:] == [("iris", 2, 2)]

"""The in-process stage split of a large request, typed rows vs v2 binary: every stage runs on a
real data plane (process pool), and the table shows the figures it measured."""

from bench import v2_split
from serving.store import Manifest, ModelStore


def test_split_times_every_stage_on_the_real_pool(store: ModelStore, iris: Manifest) -> None:
    (split,) = v2_split.measure(store.root, [iris.name], rows=300, repeats=2)
    assert (split.model, split.rows) == (iris.name, 300)
    expected = {
        *v2_split.TYPED_STAGES,
        *v2_split.V2_STAGES,
        "model alone (in process)",
    }
    assert set(split.stages) == expected
    assert all(ms > 0 for ms in split.stages.values())
    assert split.typed_ms == sum(split.stages[s] for s in v2_split.TYPED_STAGES)
    assert split.ratio == split.typed_ms / split.v2_ms
    text = v2_split.table([split])
    assert f"{iris.name} ({split.runtime}), one request of 300 rows" in text
    assert f"{split.stages['v2 pool round trip']:8.2f}" in text
    assert f"{split.ratio:.2f}x" in text
    assert split.labels_as == "positions"  # iris's text labels cross as numbers

"""Arrays through a shared region between two ends of a real socketpair (SCM_RIGHTS and all)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection

import numpy as np
import pytest

from serving.execution.shared_arrays import (
    MIN_SHARED_BYTES,
    REGION,
    Inbox,
    Outbox,
    SharedArray,
    supported,
)
from tests.serving.regions import shared_regions

pytestmark = pytest.mark.skipif(not supported(), reason="no memfd_create on this platform")


@pytest.fixture
def ends() -> Iterator[tuple[Connection, Connection]]:
    sender, receiver = multiprocessing.Pipe(duplex=True)
    yield sender, receiver
    sender.close()
    receiver.close()


def _deliver(receiver: Connection, inbox: Inbox) -> None:
    """What a receiving loop does with the messages before the one that uses the arrays."""
    while receiver.poll():
        message = receiver.recv()
        assert message[0] == REGION
        inbox.attach(receiver, message[1])


def test_small_values_travel_as_they_are(ends: tuple[Connection, Connection]) -> None:
    sender, receiver = ends
    small = np.arange(10, dtype=np.float64)
    labels = np.array(["a", "b"], dtype=object)
    packed = Outbox(sender).pack(small, None, labels)
    assert packed[0] is small
    assert packed[1] is None
    assert packed[2] is labels
    assert not receiver.poll()  # no region was made


def test_large_arrays_arrive_equal_and_the_region_is_reused(
    ends: tuple[Connection, Connection],
) -> None:
    sender, receiver = ends
    outbox, inbox = Outbox(sender), Inbox()
    rng = np.random.default_rng(0)
    rows = rng.uniform(size=(10_000, 30))
    index = rng.integers(0, 3, size=10_000)
    packed = outbox.pack(rows, index, None)
    assert isinstance(packed[0], SharedArray)
    assert isinstance(packed[1], SharedArray)
    assert packed[2] is None
    _deliver(receiver, inbox)
    assert np.array_equal(inbox.unpack(packed[0], copy=True), rows)
    assert np.array_equal(inbox.unpack(packed[1], copy=True), index)
    assert inbox.unpack(packed[1], copy=False).dtype == index.dtype

    again = rng.uniform(size=(5_000, 30))
    packed_again = outbox.pack(again)
    assert not receiver.poll()  # it fits: the same region, nothing announced
    assert outbox.regions == 1
    assert np.array_equal(inbox.unpack(packed_again[0], copy=False), again)


def test_a_bigger_array_gets_a_new_region_and_old_views_stay_valid(
    ends: tuple[Connection, Connection],
) -> None:
    sender, receiver = ends
    outbox, inbox = Outbox(sender), Inbox()
    first = np.full((20_000, 4), 1.5)
    packed = outbox.pack(first)
    _deliver(receiver, inbox)
    old_view = inbox.unpack(packed[0], copy=False)
    big = np.random.default_rng(1).uniform(size=(200_000, 8))  # 12.8 MB: past the first region
    packed_big = outbox.pack(big)
    _deliver(receiver, inbox)
    assert outbox.regions == 2
    assert outbox.capacity >= big.nbytes
    assert np.array_equal(inbox.unpack(packed_big[0], copy=False), big)
    assert np.all(old_view == 1.5)  # the old mapping lives as long as a view of it


def test_non_contiguous_arrays_are_placed_in_row_major_order(
    ends: tuple[Connection, Connection],
) -> None:
    sender, receiver = ends
    outbox, inbox = Outbox(sender), Inbox()
    wide = np.random.default_rng(2).uniform(size=(30, 10_000))
    packed = outbox.pack(wide.T)  # a transposed view
    _deliver(receiver, inbox)
    assert np.array_equal(inbox.unpack(packed[0], copy=False), wide.T)


def test_replaced_regions_leave_no_file_descriptor_open(
    ends: tuple[Connection, Connection],
) -> None:
    sender, receiver = ends
    before = shared_regions()
    outbox, inbox = Outbox(sender), Inbox()
    open_fds = []
    for rows in (10_000, 100_000, 1_000_000, 10_000):
        packed = outbox.pack(np.ones((rows, 4)))
        _deliver(receiver, inbox)
        assert inbox.unpack(packed[0], copy=False).sum() == rows * 4
        # Each side's live mapping holds a descriptor (mmap keeps its own); nothing more.
        open_fds.append(len(shared_regions() - before))
    assert outbox.regions == 3
    assert open_fds == [2, 2, 2, 2]
    outbox.release()
    inbox.release()
    assert shared_regions() - before == set()


def test_a_released_region_stays_mapped_while_an_array_views_it(
    ends: tuple[Connection, Connection],
) -> None:
    sender, receiver = ends
    before = shared_regions()
    outbox, inbox = Outbox(sender), Inbox()
    packed = outbox.pack(np.arange(100_000.0))
    _deliver(receiver, inbox)
    view = inbox.unpack(packed[0], copy=False)
    inbox.release()
    outbox.release()
    assert view[-1] == 99_999.0  # would crash the process on an unmapped region
    assert len(shared_regions() - before) == 1
    del view
    assert shared_regions() - before == set()


def test_disabled_or_below_the_threshold_nothing_is_shared(
    ends: tuple[Connection, Connection],
) -> None:
    sender, receiver = ends
    rows = np.ones((100_000, 4))
    assert Outbox(sender, enabled=False).pack(rows)[0] is rows
    just_below = np.ones(MIN_SHARED_BYTES // 8 - 8)
    assert Outbox(sender).pack(just_below)[0] is just_below
    assert not receiver.poll()


def test_an_array_before_its_region_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before its region"):
        Inbox().unpack(SharedArray(0, "<f8", (10, 4)), copy=True)


def test_a_region_whose_descriptor_does_not_arrive_is_a_broken_connection(
    ends: tuple[Connection, Connection],
) -> None:
    # As when this process is out of descriptors: the kernel drops the one in transit. The
    # pool and the worker give up a peer on OSError; anything else would leave the peer
    # writing answers into a region this side never mapped.
    sender, receiver = ends
    sender.send((REGION, 1 << 20))
    sender.send("not a descriptor")
    assert receiver.recv()[0] == REGION
    with pytest.raises(OSError, match="descriptor did not arrive"):
        Inbox().attach(receiver, 1 << 20)

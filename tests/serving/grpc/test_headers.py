"""Request header blocks: what a call needs of them, and remembered results never outliving the
HPACK table state they were decoded in."""

from __future__ import annotations

import pytest
from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple

from serving.grpc.calls import Status
from serving.grpc.headers import COMPRESSED, HeaderDecoder, changes_table, head_of, timeout_of

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
    (b":authority", b"127.0.0.1"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"x-request-id", b"abc"),
]


def test_a_clients_second_identical_block_changes_nothing_and_is_remembered() -> None:
    encoder = Encoder()
    first, second = encoder.encode(REQUEST), encoder.encode(REQUEST)
    assert changes_table(first)  # literals with incremental indexing
    assert not changes_table(second)  # every field indexed
    decoder = HeaderDecoder(16_384)
    decoder.decode(first)
    head = decoder.decode(second)
    assert decoder.decode(second) is head  # remembered
    assert head.path == "/inference.GRPCInferenceService/ModelInfer"
    assert head.metadata == {"x-request-id": "abc"}
    assert head.grpc
    assert head.timeout_s is None
    assert head.problem is None


def test_a_remembered_block_is_read_again_once_the_table_changed() -> None:
    """The same bytes (an indexed field, 62: the newest entry) mean another field once a new
    entry was added: the decoder must not answer from memory."""
    encoder = Encoder()
    decoder = HeaderDecoder(16_384)
    decoder.decode(encoder.encode([(b"x-a", b"1")]))
    newest = b"\xbe"  # indexed field 62
    assert decoder.decode(newest).metadata == {"x-a": "1"}
    decoder.decode(encoder.encode([(b"x-b", b"2")]))
    assert decoder.decode(newest).metadata == {"x-b": "2"}


def test_blocks_that_never_index_or_only_refer_do_not_change_the_table() -> None:
    encoder = Encoder()
    never = encoder.encode([NeverIndexedHeaderTuple(b"authorization", b"Bearer x")])
    plain = encoder.encode([HeaderTuple(b"x-c", b"3")], huffman=False)
    assert not changes_table(never)
    assert changes_table(plain)
    assert not changes_table(encoder.encode([(b":method", b"POST")]))  # static table
    encoder.header_table_size = 1024  # the next block starts with a size update
    assert changes_table(encoder.encode([(b":method", b"POST")]))


def test_long_values_and_indices_are_skipped_whole() -> None:
    encoder = Encoder()
    long = [NeverIndexedHeaderTuple(b"x-" + b"n" * 300, b"v" * 1000)]
    assert not changes_table(encoder.encode(long, huffman=False))
    assert not changes_table(encoder.encode(long, huffman=True))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1S", 1.0), (b"250m", 0.25), (b"99999999u", 99.999999), (b"2M", 120.0), (b"1H", 3600.0)],
)
def test_grpc_timeouts(value: bytes, seconds: float) -> None:
    assert timeout_of(value) == pytest.approx(seconds)


def test_what_refuses_a_call_before_it_runs() -> None:
    bad_timeout = head_of([*REQUEST, (b"grpc-timeout", b"soon")])
    assert bad_timeout.problem is not None
    assert bad_timeout.problem.code is Status.INVALID_ARGUMENT
    gzip = head_of([*REQUEST, (b"grpc-encoding", b"gzip")])
    assert gzip.problem is not None
    assert gzip.problem.code is Status.UNIMPLEMENTED
    assert str(gzip.problem) == COMPRESSED
    assert not head_of([(b":method", b"GET"), (b":path", b"/")]).grpc
    assert not head_of([(b":method", b"POST"), (b"content-type", b"application/json")]).grpc
    assert (
        "grpc-accept-encoding"
        not in head_of([*REQUEST, (b"grpc-accept-encoding", b"gzip")]).metadata
    )

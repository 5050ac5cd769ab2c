"""One pass over a request's headers: id, timeout, length and the refusals they call for."""

from __future__ import annotations

import pytest

from serving.core.errors import BadRequestError, UnsupportedMediaError
from serving.http.request_headers import read_headers, timeout_s


def test_a_valid_id_is_kept_and_stamped_first() -> None:
    scope = {"headers": [(b"x-request-id", b"abc-1"), (b"content-length", b"12")]}
    request_id, stamp, timeout, length, refusal = read_headers(scope, [(b"x-r", b"1")], True)
    assert (request_id, timeout, length, refusal) == ("abc-1", None, 12, None)
    assert stamp == [(b"x-request-id", b"abc-1"), (b"x-r", b"1")]


def test_refusals_the_headers_call_for() -> None:
    bad_id = read_headers({"headers": [(b"x-request-id", b"a b")]}, [], False)
    assert isinstance(bad_id[4], BadRequestError)
    assert bad_id[0] != "a b"  # a fresh id answers the refusal
    media = [(b"content-type", b"text/plain")]
    assert isinstance(read_headers({"headers": media}, [], True)[4], UnsupportedMediaError)
    assert read_headers({"headers": media}, [], False)[4] is None  # not a predict body
    assert timeout_s(b"2.5") == 2.5
    for value in (b"0", b"-1", b"nan", b"inf", b"soon"):
        with pytest.raises(BadRequestError):
            timeout_s(value)

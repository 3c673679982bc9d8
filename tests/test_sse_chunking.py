"""The SSE decoder's events do not depend on how the bytes were cut into chunks.

`SSEDecoder.feed` has a fast path for the common chunk (only `data: X` lines, each followed by
a blank line, nothing pending); feeding one byte at a time never takes it, so it is the
oracle here for chunkings that do.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oai_adapter._sse import SSEDecoder, SSEError, SSEEvent

_payload = st.binary(min_size=0, max_size=40).map(
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"")
)
_piece = st.one_of(
    _payload.map(lambda p: b"data: " + p + b"\n\n"),  # the fast path's frame
    _payload.map(lambda p: b"data:" + p + b"\n\n"),  # no space after the colon
    _payload.map(lambda p: b"data: " + p + b"\r\n\r\n"),  # CRLF
    _payload.map(lambda p: b"data: " + p + b"\ndata: " + p + b"\n\n"),  # multi-line data
    _payload.map(lambda p: b"event: e\ndata: " + p + b"\n\n"),  # a named event
    st.just(b": keep-alive\n\n"),  # a comment
    st.just(b"\n"),  # a stray blank line
    st.just(b"data: x\n"),  # an event whose blank line comes later
    st.just(b"event: e\n"),  # a name whose data comes later
)


def _feed_all(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    out: list[SSEEvent] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out + decoder.close()


@given(st.data())
def test_events_do_not_depend_on_the_chunking(data: st.DataObject) -> None:
    pieces = data.draw(st.lists(_piece, max_size=30))
    stream = b"".join(pieces)
    # Cut at piece boundaries (where the fast path meets pending state) and anywhere else.
    ends = [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces))]
    at_pieces = data.draw(st.lists(st.sampled_from(ends), max_size=10)) if ends else []
    anywhere = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    bounds = sorted({0, len(stream), *at_pieces, *anywhere})
    chunks = [stream[a:b] for a, b in pairwise(bounds)]
    one_byte_at_a_time = [stream[i : i + 1] for i in range(len(stream))]
    assert _feed_all(chunks) == _feed_all(one_byte_at_a_time)


def test_a_whole_chunk_of_data_frames_decodes_to_one_event_each() -> None:
    decoder = SSEDecoder()
    chunk = b"".join(b"data: {%d}\n\n" % i for i in range(100)) + b"data: {par"
    assert decoder.feed(chunk) == [("message", b"{%d}" % i) for i in range(100)]
    assert decoder.feed(b"tial}\n\n") == [("message", b"{partial}")]


def test_an_oversized_event_in_a_chunk_of_data_frames_is_refused() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSEError):
        decoder.feed(b"data: small\n\ndata: " + b"x" * 100 + b"\n\n")

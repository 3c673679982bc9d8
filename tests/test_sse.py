"""The SSE decoder follows WHATWG's event-stream rules, whatever the chunking."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oai_adapter._sse import SSEDecoder, SSEError, SSEEvent

from .sansio import split_at


def decode_all(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    out.extend(decoder.close())
    return out


def test_lf_crlf_and_cr_line_ends_are_equivalent() -> None:
    for eol in (b"\n", b"\r\n", b"\r"):
        body = b"data: a" + eol + eol + b"data: b" + eol + eol
        assert decode_all([body]) == [("message", b"a"), ("message", b"b")]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    assert decode_all([b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]) == [
        ("message", b"a"),
        ("message", b"b"),
    ]


def test_comments_and_keepalives_dispatch_nothing() -> None:
    assert decode_all([b": keep-alive\n\n:\n\n: ping\n"]) == []


def test_multiline_data_is_joined_with_lf() -> None:
    assert decode_all([b"data: line1\ndata: line2\ndata\n\n"]) == [("message", b"line1\nline2\n")]


def test_event_name_applies_to_one_event_only() -> None:
    body = b"event: response.created\ndata: {}\n\ndata: x\n\n"
    assert decode_all([body]) == [("response.created", b"{}"), ("message", b"x")]


def test_only_one_leading_space_is_dropped() -> None:
    assert decode_all([b"data:  two\n\ndata:none\n\n"]) == [
        ("message", b" two"),
        ("message", b"none"),
    ]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode_all([b"event: ping\n\nid: 7\nretry: 10\n\n"]) == []


def test_leading_bom_is_ignored_even_when_split() -> None:
    assert decode_all([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [("message", b"x")]


def test_utf8_character_split_across_chunks_is_rejoined() -> None:
    body = 'data: {"t": "é😀"}\n\n'.encode()
    cut = body.index("😀".encode()) + 2
    assert decode_all([body[:cut], body[cut:]]) == [("message", '{"t": "é😀"}'.encode())]


def test_complete_lines_without_final_blank_line_are_dispatched_at_close() -> None:
    assert decode_all([b"data: last\n"]) == [("message", b"last")]


def test_partial_last_line_is_discarded_at_close() -> None:
    assert decode_all([b"data: a\n\ndata: trunc"]) == [("message", b"a")]


def test_event_larger_than_cap_is_an_error() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(SSEError):
        decoder.feed(b"data: " + b"x" * 200)


def test_many_data_lines_over_cap_is_an_error() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    for _ in range(20):
        decoder.feed(b"data: xxxx\n")  # 20 x 5 bytes: at the cap
    with pytest.raises(SSEError):
        decoder.feed(b"data: xxxx\n")


# --- chunking: the events do not depend on how the bytes were cut -----------------------------
#
# `feed` has a fast path for the common chunk (only `data: X` lines, each followed by a blank
# line, nothing pending), so a third of the frames below are that frame, a third the same without
# the space after the colon, and the rest add names, comments, multi-line data and stray blank
# lines. Any frame may use any of the three line ends. The
# expected events come from how the stream was built, not from the decoder.

_VALUE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
_NAME = st.sampled_from([None, "message", "delta", "response.completed"])
_EOL = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def _event_stream(draw: st.DrawFn) -> tuple[bytes, list[int], list[int], list[SSEEvent]]:
    """(the stream, the offsets where a frame ends, where a line ends, the events it carries)."""
    body = b""
    frame_ends: list[int] = []
    line_ends: list[int] = []
    expected: list[SSEEvent] = []
    for _ in range(draw(st.integers(0, 30))):
        eol = draw(_EOL)
        # one data line and its blank line ("data: " is the fast path's frame), or any frame
        shape = draw(st.sampled_from(["data: ", "data:", "any"]))
        simple = shape != "any"
        name = None if simple else draw(_NAME)
        lines = [b": keep-alive"] if not simple and draw(st.booleans()) else []
        if name is not None:
            lines.append(b"event: " + name.encode())
        values = []
        for value in draw(st.lists(_VALUE, min_size=1, max_size=1 if simple else 3)):
            space = shape == "data: " if simple else draw(st.booleans())
            lines.append(b"data: " + value if space else b"data:" + value)
            values.append(value if space or not value.startswith(b" ") else value[1:])
        lines.append(b"")  # the blank line that dispatches
        if not simple and draw(st.booleans()):
            lines.append(b"")  # a stray blank line dispatches nothing
        for line in lines:
            body += line + eol
            line_ends.append(len(body))
        frame_ends.append(len(body))
        expected.append((name or "message", b"\n".join(values)))
    return body, frame_ends, line_ends, expected


@given(stream=_event_stream(), data=st.data())
@pytest.mark.req("OC-ADAPT-OAI-6011")
def test_any_chunking_gives_the_same_events(
    stream: tuple[bytes, list[int], list[int], list[SSEEvent]], data: st.DataObject
) -> None:
    body, frame_ends, line_ends, expected = stream
    # Cut where a frame ends (where the fast path meets pending state), where a line ends, and
    # anywhere.
    cuts = [st.sampled_from(ends) for ends in (frame_ends, line_ends) if ends]
    at_ends = [data.draw(st.lists(cut, max_size=6)) for cut in cuts]
    anywhere = data.draw(st.lists(st.integers(0, len(body)), max_size=4))
    assert decode_all(split_at(body, [*itertools.chain(*at_ends), *anywhere])) == expected
    assert decode_all([body[i : i + 1] for i in range(len(body))]) == expected
    # every frame its own chunk: the decode-step regime, one event per read (a fast path)
    assert decode_all(split_at(body, frame_ends)) == expected


def test_a_whole_chunk_of_data_frames_decodes_to_one_event_each() -> None:
    decoder = SSEDecoder()
    chunk = b"".join(b"data: {%d}\n\n" % i for i in range(100)) + b"data: {par"
    assert decoder.feed(chunk) == [("message", b"{%d}" % i) for i in range(100)]
    assert decoder.feed(b"tial}\n\n") == [("message", b"{partial}")]


def test_a_one_event_chunk_after_pending_lines_joins_them() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\n") == [("message", b"a")]
    assert decoder.feed(b"event: delta\n") == []
    assert decoder.feed(b"data: b\n\n") == [("delta", b"b")]
    assert decoder.feed(b"data: c\n") == []
    assert decoder.feed(b"data: d\n\n") == [("message", b"c\nd")]
    assert decoder.feed(b"data: e\r") == []
    assert decoder.feed(b"\ndata: f\n\n") == [("message", b"e\nf")]  # CR LF: one line end


def test_an_oversized_event_alone_in_its_chunk_is_refused() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    assert decoder.feed(b"data: small\n\n") == [("message", b"small")]
    with pytest.raises(SSEError):
        decoder.feed(b"data: " + b"x" * 100 + b"\n\n")


def test_an_oversized_event_in_a_chunk_of_data_frames_is_refused() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSEError):
        decoder.feed(b"data: small\n\ndata: " + b"x" * 100 + b"\n\n")

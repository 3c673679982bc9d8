"""The SSE decoder follows WHATWG's event-stream rules, whatever the chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oai_adapter._sse import SSEDecoder, SSEError


def decode_all(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    decoder = SSEDecoder()
    out: list[tuple[str, bytes]] = []
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


FRAME = st.tuples(
    st.sampled_from([None, "message", "delta", "response.completed"]),
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=20),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.booleans(),
)


@given(
    frames=st.lists(FRAME, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_any_chunking_gives_the_same_events(
    frames: list[tuple[str | None, list[str], bytes, bool]], cuts: list[int]
) -> None:
    body = b""
    expected: list[tuple[str, bytes]] = []
    for name, lines, eol, comment in frames:
        if comment:
            body += b": keep-alive" + eol
        if name is not None:
            body += b"event: " + name.encode() + eol
        for line in lines:
            body += b"data: " + line.encode() + eol
        body += eol
        expected.append((name or "message", "\n".join(lines).encode()))
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert decode_all(chunks) == expected
    assert decode_all([body[i : i + 1] for i in range(len(body))]) == expected

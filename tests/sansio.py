"""Helpers for the sans-IO tests: a scripted stream's bytes, cut into chunks, mapped as the
reader maps them."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TypeVar

from oai_adapter._events import Event
from oai_adapter._mappers import Mapper
from oai_adapter._sse import SSEDecoder
from oai_adapter.testing import Send, Step

_Text = TypeVar("_Text", bytes, str)


def body_of(steps: Iterable[Step]) -> bytes:
    """The bytes a scripted reply sends (its `Send` steps), e.g. of `render_stream(...)`."""
    return b"".join(step.data for step in steps if isinstance(step, Send))


def split_at(data: _Text, cuts: Iterable[int]) -> list[_Text]:
    """`data` cut at each offset of `cuts` (taken modulo `len(data) + 1`, so any integer a
    hypothesis strategy draws is a cut); no piece is empty, and the pieces join to `data`."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def map_stream(mapper: Mapper, chunks: Iterable[bytes]) -> list[Event]:
    """Decode the chunks and map their events as the reader does: nothing is fed once the
    mapper is done, and the decoder is closed at the end of the stream."""
    decoder = SSEDecoder()
    out: list[Event] = []
    for chunk in chunks:
        for name, data in decoder.feed(chunk):
            if mapper.done:
                return out
            mapper.feed(name, data, out)
    for name, data in decoder.close():
        if mapper.done:
            return out
        mapper.feed(name, data, out)
    return out

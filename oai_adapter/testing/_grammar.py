"""The event grammar of one task's stream, asserted: what every test of a stream checks.

The grammar itself is `oai_adapter._grammar.stream_problem` (the one checker, shared with the
CLI's `check`); this adds what only a test knows — the upstream's token texts — and turns a
problem into an `AssertionError`, so a test reads `end = check_stream(events, tokens=...)`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._events import End, Event, Token
from .._grammar import stream_problem

__all__ = ["check_stream", "stream_problem"]


def check_stream(events: Sequence[Event], *, tokens: Sequence[str] | None = None) -> End:
    """Raise `AssertionError` unless `events` is one well-formed stream; return its `End`.

    `tokens`: the upstream's token texts; the delivered Tokens must be a prefix of them, text for
    text (no token lost, duplicated or reordered).
    """
    problem = stream_problem(events)
    if problem is not None:
        raise AssertionError(f"{problem}: {list(events)!r}"[:2000])
    end = events[-1]
    assert isinstance(end, End)
    if tokens is not None:
        texts = [ev.text for ev in events if isinstance(ev, Token)]
        if len(texts) > len(tokens):
            raise AssertionError(f"{len(texts)} Tokens, the upstream sent {len(tokens)}")
        if texts != list(tokens[: len(texts)]):
            raise AssertionError("the Tokens are not a prefix of the upstream's text")
    return end

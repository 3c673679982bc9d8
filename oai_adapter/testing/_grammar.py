"""The event grammar of one task's stream, checked: what every test of a stream asserts.

DESIGN.md, "Events": `Started Token* Metrics? End` or just `End` (other output deltas, such
as reasoning or tool-call deltas, may sit among the Tokens); `Metrics` before every `End`
that follows a `Started`, except a cancel's; exactly one `End`, last; `Token.index` consecutive
from 0; `End.tokens_out` the number of Tokens; `End.error` set iff `reason == "error"`. Sans-IO,
so a test, a fuzzer or an application's own checks can run it on a recorded stream.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._events import End, Event, Metrics, Started, Token

__all__ = ["check_stream"]


def check_stream(events: Sequence[Event], *, tokens: Sequence[str] | None = None) -> End:
    """Raise `AssertionError` unless `events` is one well-formed stream; return its `End`.

    `tokens`: the upstream's token texts; the delivered Tokens must be a prefix of them, text for
    text (no token lost, duplicated or reordered).
    """
    assert events, "no event at all"
    end = events[-1]
    assert isinstance(end, End), f"the last event is not End: {end!r}"
    task_ids = {ev.task_id for ev in events}
    assert len(task_ids) == 1, f"events of several tasks: {task_ids}"
    assert (end.error is not None) == (end.reason == "error"), f"error iff reason error: {end!r}"
    body = events[:-1]
    assert not any(isinstance(ev, End) for ev in body), "more than one End"
    texts: list[str] = []
    if body:
        started = body[0]
        assert isinstance(started, Started), (
            f"a stream that is not just End opens with Started: {started!r}"
        )
        assert started.attempt >= 1
        rest = body[1:]
        metrics: Metrics | None = None
        if rest and isinstance(rest[-1], Metrics):
            metrics = rest[-1]
            rest = rest[:-1]
        for ev in rest:
            # other output deltas (reasoning, tool calls) may sit among the Tokens
            assert not isinstance(ev, Started | Metrics), f"misplaced {ev!r}"
            if isinstance(ev, Token):
                assert ev.index == len(texts), f"Token index {ev.index} after {len(texts)} Tokens"
                assert ev.text, "an empty Token"
                texts.append(ev.text)
        if end.reason != "cancelled":
            assert metrics is not None, f"no Metrics before {end!r}"
        if metrics is not None:
            assert metrics.tokens_out == len(texts)
            assert metrics.retries == started.attempt - 1
    assert end.tokens_out == len(texts), f"End.tokens_out {end.tokens_out} != {len(texts)} Tokens"
    if tokens is not None:
        assert len(texts) <= len(tokens), "more Tokens than the upstream sent"
        assert texts == list(tokens[: len(texts)]), "Tokens are not the upstream's text prefix"
    return end

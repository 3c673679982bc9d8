"""The event grammar of one task's stream, as one function: `stream_problem(events)`.

DESIGN.md, "Events": the stream is `Started (Token | ToolCallDelta | ReasoningDelta)* Metrics? End`
or just `End`. `Metrics` precedes every `End` that follows a `Started`, except a cancel's (a
cancel may still come after the consumer read `Metrics`, so there it is allowed, not required);
exactly one `End`, nothing after it; `End.error` set iff `reason == "error"`; `Token.index`
consecutive from 0, no Token empty; `End.tokens_out` and `Metrics.tokens_out` the number of
Tokens delivered; `Metrics.retries` is `Started.attempt - 1`; one `task_id` throughout.

Sans-IO and dependency-free, so that the one checker serves everyone who judges a stream: the
kit's `check_stream` (tests, fuzzers, an application's own checks) and the CLI's `check` command,
which must not import the test servers to do it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._events import End, Event, Metrics, ReasoningDelta, Started, Token, ToolCallDelta

__all__ = ["stream_problem"]

_DELTAS = (Token, ToolCallDelta, ReasoningDelta)


def stream_problem(events: Sequence[Event]) -> str | None:
    """Why `events` is not one well-formed stream (see the module header), else `None`."""
    if not events:
        return "no event at all"
    end = events[-1]
    if not isinstance(end, End):
        return "the stream did not end with End"
    if len({ev.task_id for ev in events}) != 1:
        return f"events of several tasks: {sorted({ev.task_id for ev in events})}"
    if (end.error is not None) != (end.reason == "error"):
        return f"End.error is set iff the reason is error: {end!r}"
    body = events[:-1]
    if any(isinstance(ev, End) for ev in body):
        return "more than one End"
    tokens = 0
    if body:
        started = body[0]
        if not isinstance(started, Started):
            return f"the first event is {type(started).__name__}, not Started"
        if started.attempt < 1:
            return f"Started.attempt is {started.attempt}, attempts count from 1"
        rest = body[1:]
        metrics = rest[-1] if rest and isinstance(rest[-1], Metrics) else None
        if metrics is not None:
            rest = rest[:-1]
        for ev in rest:
            if not isinstance(ev, _DELTAS):
                return f"a {type(ev).__name__} among the deltas"
            if isinstance(ev, Token):
                if ev.index != tokens:
                    return f"Token index {ev.index} where {tokens} was due"
                if not ev.text:
                    return f"an empty Token at index {ev.index}"
                tokens += 1
        if metrics is None and end.reason != "cancelled":
            return "no Metrics before End"
        if metrics is not None:
            if metrics.tokens_out != tokens:
                return f"Metrics.tokens_out is {metrics.tokens_out}, {tokens} Tokens were delivered"
            if metrics.retries != started.attempt - 1:
                return f"Metrics.retries is {metrics.retries} on attempt {started.attempt}"
    if end.tokens_out != tokens:
        return f"End.tokens_out is {end.tokens_out}, {tokens} Tokens were delivered"
    return None

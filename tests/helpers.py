"""Helpers shared by the I/O tests: collecting a task's events and checking its grammar."""

from __future__ import annotations

from oai_adapter import End, Metrics, OpenAIAdapter, Started, TaskRequest, Token
from oai_adapter._events import Event


async def collect(adapter: OpenAIAdapter, req: TaskRequest) -> list[Event]:
    async with adapter.submit(req) as events:
        return [ev async for ev in events]


def check_grammar(events: list[Event]) -> None:
    """`Started Token* Metrics End`, `Started Token* End(cancelled)` or a lone `End`."""
    assert events, "no events"
    end = events[-1]
    assert isinstance(end, End), f"last event is {end!r}"
    assert sum(isinstance(e, End) for e in events) == 1
    assert (end.error is not None) == (end.reason == "error")
    tokens = [e for e in events if isinstance(e, Token)]
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert end.tokens_out == len(tokens)
    if isinstance(events[0], Started):
        assert sum(isinstance(e, Started) for e in events) == 1
        middle = events[1:-1]
        if end.reason == "cancelled":
            assert all(isinstance(e, Token) for e in middle)
        else:
            assert isinstance(middle[-1], Metrics), "Metrics must precede End after Started"
            assert all(isinstance(e, Token) for e in middle[:-1])
            assert middle[-1].tokens_out == len(tokens)
    else:
        assert len(events) == 1, f"events before Started: {events}"


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))

"""Hostile upstreams, played byte for byte by `tests/hostile.py` (issue 14).

Each case is an upstream no real server framework would let us write — a stream of nested
brackets, a header value that overflows a float conversion, a usage block of floats — and the
outcome the adapter owes the consumer for it: one `End`, naming the cause, never an exception
out of the iteration.
"""

from __future__ import annotations

import trio

from oai_adapter import End, ErrorKind, OpenAIAdapter, TaskRequest
from oai_adapter._events import Event

from .conftest import IO_DEADLINE, make_config
from .helpers import check_grammar, collect, text_of
from .hostile import Close, HostileUpstream, Read, Reset, Wait, Write, sse_response

_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
_FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'


def end_of(events: list[Event]) -> End:
    """The task's `End`, after checking the whole stream's grammar."""
    check_grammar(events)
    end = events[-1]
    assert isinstance(end, End)
    return end


async def test_hostile_upstream_plays_a_scripted_stream(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock
) -> None:
    hostile.play(sse_response(_CHUNK, _FINISH))
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile)) as adapter:
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    assert end_of(events).reason == "stop"
    assert text_of(events) == "hi"
    assert hostile.requests[0].startswith(b"POST /v1/chat/completions ")


async def test_hostile_upstream_pauses_on_an_event_then_resets(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock
) -> None:
    go = trio.Event()
    head = sse_response(_CHUNK)
    hostile.script([Read(), Write(head), Wait(go), Reset()])
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile)) as adapter:
            async with adapter.submit(TaskRequest(task_id="t", prompt="x")) as events:
                seen = []
                async for ev in events:
                    seen.append(ev)
                    if text_of(seen) == "hi":
                        go.set()
    error = end_of(seen).error
    assert error is not None
    assert error.kind is ErrorKind.WORKER_RESET


async def test_hostile_upstream_closing_before_a_response_is_retried(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock
) -> None:
    hostile.script([Read(), Close()], [Read(), Write(sse_response(_CHUNK, _FINISH)), Close()])
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile)) as adapter:
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    check_grammar(events)
    assert text_of(events) == "hi"
    assert hostile.connections == 2

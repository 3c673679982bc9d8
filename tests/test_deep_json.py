"""JSON nested too deep (about 2 KB of `[`) in what the upstream streams: msgspec raises
`RecursionError` on it, not `DecodeError`; the stream still ends as `End(error, …)` naming the
cause, never with the reader dying and the consumer getting `RuntimeError` (issue 14, item 4)."""

from __future__ import annotations

import trio

from oai_adapter import End, ErrorKind, OpenAIAdapter, Started, TaskRequest
from oai_adapter.testing import FakeUpstream, Reply, Send, render_stream

from .conftest import IO_DEADLINE, make_config

NESTED = b"[" * 2100 + b"]" * 2100


async def run(upstream: FakeUpstream) -> list[object]:
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="deep", prompt="hi")) as events:
                return [ev async for ev in events]


async def test_an_event_nested_too_deep_after_started_ends_as_protocol(
    upstream: FakeUpstream,
) -> None:
    first = render_stream("chat", ["a"])[:2]  # the role delta and one token
    deep = b'data: {"choices": [{"index": 0, "delta": {"content": "b"}}], "x": ' + NESTED + b"}\n\n"
    upstream.script(Reply(steps=[*first, Send(deep)]))
    events = await run(upstream)
    assert isinstance(events[0], Started)
    end = events[-1]
    assert isinstance(end, End)
    assert end.reason == "error"
    assert end.error is not None
    assert end.error.kind is ErrorKind.PROTOCOL
    assert "deep" in end.error.message or "recursion" in end.error.message.lower()


async def test_an_error_body_nested_too_deep_still_ends_by_its_status(
    upstream: FakeUpstream,
) -> None:
    deep = b'{"error": {"message": "x", "detail": ' + NESTED + b"}, " + b'"x": ' + NESTED + b"}"
    upstream.script(
        Reply(status=400, headers=[("content-type", "application/json")], steps=[Send(deep)])
    )
    events = await run(upstream)
    (end,) = events
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.INVALID_PARAMS
    assert end.error.status == 400

"""Regression: a stream the upstream finished is read to its end before it is closed.

Closing a response early costs its HTTP/1.1 connection (the next task connects again), and
leaves one of httpcore2's async generators to the garbage collector, which trio reports as a
`ResourceWarning` (an error under `filterwarnings = error`).
"""

from __future__ import annotations

import trio

from oai_adapter import End, OpenAIAdapter, Started, TaskRequest
from oai_adapter.testing import FakeUpstream, Reply, Send, sse

from .conftest import IO_DEADLINE, make_config


async def run(adapter: OpenAIAdapter, task_id: str) -> list[object]:
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id=task_id, prompt="hi")) as events:
            return [ev async for ev in events]


async def test_finished_streams_reuse_one_connection(upstream: FakeUpstream) -> None:
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        for i in range(3):
            events = await run(adapter, f"t-{i}")
            end = events[-1]
            assert isinstance(end, End)
            assert end.reason == "stop"
    assert upstream.connections_total == 1


async def test_retry_after_a_first_event_error_reuses_the_connection(
    upstream: FakeUpstream,
) -> None:
    limited = sse({"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded"}})
    upstream.script(Reply(steps=[Send(limited)]))
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        events = await run(adapter, "t-r")
    started = events[0]
    assert isinstance(started, Started)
    assert started.attempt == 2
    assert upstream.connections_total == 1

"""Regression: a stream that ends at `[DONE]` (before the connection's EOF) closes the
response's byte iterator instead of leaving it to the garbage collector, which warns
(ResourceWarning, an error under `filterwarnings = error`)."""

from __future__ import annotations

import gc

import trio

from oai_adapter import End, OpenAIAdapter, TaskRequest
from oai_adapter.testing import FakeUpstream

IO_DEADLINE = 20  # seconds, as in conftest.py


async def test_finished_stream_closes_the_response_byte_iterator(
    adapter: OpenAIAdapter,
) -> None:
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="t", prompt="Hi")) as events:
            last = None
            async for event in events:
                last = event
    assert isinstance(last, End)
    assert last.reason == "stop"
    gc.collect()  # an unclosed async generator would warn here, failing the test


async def test_tasks_in_a_row_reuse_one_pooled_connection(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    with trio.fail_after(IO_DEADLINE):
        for i in range(3):
            async with adapter.submit(TaskRequest(task_id=f"t{i}", prompt="Hi")) as events:
                async for _ in events:
                    pass
    assert len(upstream.completion_requests()) == 3
    assert upstream.connections_total == 1  # each response was read to its end

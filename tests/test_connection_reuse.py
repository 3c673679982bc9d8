"""A stream that ends normally gives its connection back to the pool (HTTP/1.1 keep-alive).

The reader stops parsing at `[DONE]`, but the response body is not over until the chunked
terminator (or the last Content-Length byte) has been read; closing it before that closes the
connection, and every later task pays a new TCP connect (≈ 1 ms on loopback, more over TLS).
"""

from __future__ import annotations

import trio

from oai_adapter import AdapterConfig, End, OpenAIAdapter, TaskRequest
from oai_adapter.testing import FakeUpstream

IO_DEADLINE = 20


async def _run(adapter: OpenAIAdapter, task_id: str) -> End:
    async with adapter.submit(TaskRequest(task_id=task_id, prompt="hi")) as events:
        async for ev in events:
            if isinstance(ev, End):
                return ev
    raise AssertionError("no End")


async def test_sequential_streams_reuse_one_connection(upstream: FakeUpstream) -> None:
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(
            AdapterConfig(base_url=upstream.base_url, model=upstream.model)
        ) as adapter:
            for i in range(3):
                end = await _run(adapter, f"t-{i}")
                assert end.reason == "stop"
    assert len(upstream.completion_requests()) == 3
    assert upstream.connections_total == 1
    assert upstream.disconnects == 0

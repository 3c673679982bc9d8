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


async def test_test_upstream_keeps_a_request_that_arrives_while_it_streams(
    nursery: trio.Nursery,
) -> None:
    # The next request on a reused connection can arrive before the previous response's
    # stream task has stopped watching the socket; it must be served, not swallowed.
    server = FakeUpstream(tokens=["a", "b", "c"], pace=0.01)
    await nursery.start(server.serve)
    body = b'{"model":"test-model","stream":true,"prompt":"Hi"}'
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with trio.fail_after(IO_DEADLINE):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(request)
        received = await stream.receive_some(65536)  # the first response has begun
        await stream.send_all(request)  # pipelined: arrives while the first one streams
        while received.count(b"data: [DONE]") < 2:
            chunk = await stream.receive_some(65536)
            assert chunk, "the server closed the connection"
            received += chunk
        await stream.aclose()
    assert received.count(b"HTTP/1.1 200") == 2
    assert len(server.completion_requests()) == 2

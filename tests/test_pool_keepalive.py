"""The pool keeps at most `MAX_KEEPALIVE` idle connections after a burst of streams.

httpcore2 polls every idle pooled connection's socket on each request and close, so keeping
one idle connection per past concurrent stream makes every later request pay for all of
them (docs/performance.md, "Concurrency").
"""

from __future__ import annotations

import trio
import trio.testing

from oai_adapter import AdapterConfig, End, OpenAIAdapter, Started, TaskRequest
from oai_adapter._http import MAX_KEEPALIVE
from oai_adapter.testing import FakeUpstream

IO_DEADLINE = 20


async def test_a_burst_leaves_at_most_max_keepalive_idle_connections(
    upstream: FakeUpstream,
) -> None:
    streams = MAX_KEEPALIVE + 8
    config = AdapterConfig(
        base_url=upstream.base_url, model=upstream.model, max_connections=streams
    )
    all_started = trio.Event()
    started = 0
    ends: list[End] = []

    async def one(adapter: OpenAIAdapter, i: int) -> None:
        nonlocal started
        async with adapter.submit(TaskRequest(task_id=f"t-{i}", prompt="hi")) as events:
            async for ev in events:
                if isinstance(ev, End):
                    ends.append(ev)
                elif isinstance(ev, Started):
                    started += 1
                    if started == streams:
                        all_started.set()
                    await all_started.wait()  # every stream holds a connection at once

    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(config) as adapter:
            async with trio.open_nursery() as nursery:
                for i in range(streams):
                    nursery.start_soon(one, adapter, i)
            await trio.testing.wait_all_tasks_blocked()  # the upstream sees the closes
            assert upstream.connections_total == streams
            assert upstream.connections_open == MAX_KEEPALIVE
    assert [e.reason for e in ends] == ["stop"] * streams

"""The body's tail after the upstream said it finished: `End` first, then a bounded drain.

A stream the upstream finished (`[DONE]`, a terminal event) is read to its end after `End` was
sent, by a background drain the adapter owns, so the connection goes back to the pool (closing
it early costs the next task a connect) and a server that holds the body open after `[DONE]`
(hypercorn over HTTP/2 does) never delays `End`. The drain is bounded (`DRAIN_GRACE`), and
leaving the adapter ends every drain still running.
"""

from __future__ import annotations

import trio
import trio.testing

from oai_adapter import End, Metrics, OpenAIAdapter, Started, TaskRequest
from oai_adapter._http import DRAIN_GRACE
from oai_adapter.testing import FakeUpstream, Hang, Reply, Send, render_stream, sse

from .conftest import IO_DEADLINE, make_config


async def run(adapter: OpenAIAdapter, task_id: str) -> list[object]:
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id=task_id, prompt="hi")) as events:
            return [ev async for ev in events]


async def drains_done(adapter: OpenAIAdapter) -> None:
    while adapter.statistics().draining:
        await trio.testing.wait_all_tasks_blocked()


def held_open_after_done() -> Reply:
    """A whole stream, `[DONE]` included, then the body stays open (no chunked terminator)."""
    return Reply(steps=[*render_stream("chat", ["a", "b"]), Hang()])


async def test_finished_streams_in_a_row_reuse_one_connection(upstream: FakeUpstream) -> None:
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        for i in range(3):
            events = await run(adapter, f"t-{i}")
            end = events[-1]
            assert isinstance(end, End)
            assert end.reason == "stop"
            await drains_done(adapter)  # the tail read, the connection back in the pool
            stats = adapter.upstream.statistics()
            assert (stats.connections, stats.idle_connections) == (1, 1)
    assert upstream.connections_total == 1
    assert len(upstream.completion_requests()) == 3


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


async def test_end_does_not_wait_for_a_body_held_open_after_done(
    upstream: FakeUpstream, loopback_clock: trio.testing.MockClock
) -> None:
    upstream.script(held_open_after_done())
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            t0 = trio.current_time()
            async with adapter.submit(TaskRequest(task_id="held", prompt="hi")) as events:
                seen = [ev async for ev in events]
                end_at = trio.current_time()
            assert isinstance(seen[-2], Metrics)
            end = seen[-1]
            assert isinstance(end, End)
            assert end.reason == "stop"
            # Virtual time moves only by jumps to deadlines: the drain's is the nearest, so an
            # `End` that waited for it would arrive at t0 + DRAIN_GRACE, not before.
            assert end_at - t0 < DRAIN_GRACE / 2
            assert adapter.statistics().draining == 1  # the tail is still being waited for
            await upstream.disconnected.wait()  # the drain gave up at its grace and closed
            assert trio.current_time() - t0 >= DRAIN_GRACE
            assert adapter.statistics().draining == 0
            # The next task still gets a connection, and one whose body ends is reused after.
            assert isinstance((await run(adapter, "next"))[-1], End)
            await drains_done(adapter)
            assert isinstance((await run(adapter, "after"))[-1], End)
    assert upstream.connections_total == 2


async def test_leaving_the_adapter_ends_a_drain_still_running(
    upstream: FakeUpstream, loopback_clock: trio.testing.MockClock
) -> None:
    upstream.script(held_open_after_done())
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    with trio.fail_after(IO_DEADLINE):
        t0 = trio.current_time()
        async with OpenAIAdapter(make_config(upstream)) as adapter:
            events = await run(adapter, "held")
            assert isinstance(events[-1], End)
            assert adapter.statistics().draining == 1
        assert trio.current_time() - t0 < DRAIN_GRACE / 2  # cancelled, not waited for
        await upstream.disconnected.wait()
        assert adapter.statistics().draining == 0
        while trio.lowlevel.current_statistics().tasks_living != tasks_before:
            await trio.testing.wait_all_tasks_blocked()  # the upstream's handler ends too


async def test_a_cancel_after_the_upstream_finished_closes_the_held_response_before_end(
    upstream: FakeUpstream,
) -> None:
    # The reader sent its End and handed the held-open body to a drain; the consumer is behind
    # and cancels: its End(cancelled) comes only once that response is closed (DESIGN.md).
    upstream.script(held_open_after_done())
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="late", prompt="hi")) as events:
                assert isinstance(await events.__anext__(), Started)
                while not events.statistics().reader_done:
                    await trio.testing.wait_all_tasks_blocked()
                assert adapter.statistics().draining == 1
                assert adapter.cancel("late") is True
                end = await events.__anext__()
                assert isinstance(end, End)
                assert end.reason == "cancelled"
                assert adapter.statistics().draining == 0
                assert adapter.upstream.statistics().connections == 0

"""Cancel through a host (HOST.md, "API" and "Events"): `host.cancel` is sync, routes to the
serving replica, and `True` makes the consumer's next event `End(cancelled)` — also while the
task is backing off or between replicas; counters come back to zero whatever the checkpoint."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from loguru import logger
from trio.testing import MockClock

from oai_adapter import AdapterHost, End, RetryPolicy, Started, TaskRequest, Token
from oai_adapter._events import Event
from oai_adapter.testing import Fault, check_stream

from .hostkit import (
    DEADLINE,
    config,
    end_of,
    open_host,
    posts,
    run,
    session_for,
    start_upstreams,
)


async def test_cancel_mid_stream_ends_cancelled_and_closes_the_upstream(
    nursery: trio.Nursery,
) -> None:
    (up,) = await start_upstreams(nursery, 1)
    up.script(Fault.stall_after(4))
    seen: list[Event] = []
    with trio.fail_after(DEADLINE):
        async with open_host([up]) as host:
            async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
                async for ev in events:
                    seen.append(ev)
                    if isinstance(ev, Token) and ev.index == 1:
                        assert host.cancel("p", "t") is True
                        assert host.cancel("p", "t") is False
            await up.disconnected.wait()
            assert host.cancel("p", "t") is False  # no longer running
            stats = host.statistics().pools["p"]
    end = check_stream(seen)
    assert end.reason == "cancelled"
    assert end.tokens_out == 2
    assert stats.running == 0
    assert stats.replicas["r0"].failures == 0  # a cancel is neither success nor failure


async def test_cancel_while_the_adapter_backs_off_ends_at_once(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    (up,) = await start_upstreams(nursery, 1)
    up.script(Fault.status(503, retry_after="30"))
    with trio.fail_after(DEADLINE):
        async with open_host([up], retry=RetryPolicy(max_attempts=3, base=0.1, cap=60.0)) as host:
            async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
                while not up.completion_requests():
                    await trio.testing.wait_all_tasks_blocked()
                await trio.testing.wait_all_tasks_blocked()  # the adapter sleeps 30 s
                start = trio.current_time()
                assert host.cancel("p", "t") is True
                seen = [ev async for ev in events]
                assert trio.current_time() == start
    assert len(seen) == 1
    assert end_of(seen).reason == "cancelled"


async def test_cancel_before_the_first_event_ends_cancelled(nursery: trio.Nursery) -> None:
    (up,) = await start_upstreams(nursery, 1)
    async with open_host([up]) as host:
        async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
            assert host.cancel("p", "t") is True
            seen = [ev async for ev in events]
    assert [type(ev) for ev in seen] == [End]
    assert end_of(seen).reason == "cancelled"


async def test_cancel_from_another_thread_is_a_runtime_error(nursery: trio.Nursery) -> None:
    (up,) = await start_upstreams(nursery, 1)
    up.script(Fault.stall_after(1))
    async with open_host([up]) as host:
        async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
            await events.__anext__()
            with pytest.raises(RuntimeError, match="trio thread"):
                await trio.to_thread.run_sync(host.cancel, "p", "t")
            assert host.cancel("p", "t") is True


async def test_task_ids_are_unique_per_pool_while_running(nursery: trio.Nursery) -> None:
    (up,) = await start_upstreams(nursery, 1)
    up.script(Fault.stall_after(1))
    async with open_host([up]) as host:
        await host.bind("q", "r0", config(up))
        async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
            await events.__anext__()
            with pytest.raises(ValueError, match="already running"):
                async with host.submit("p", TaskRequest(task_id="t", prompt="hi")):
                    pass
            # another pool may run the same id
            other = await run(host, TaskRequest(task_id="t", prompt="hi"), pool="q")
            assert end_of(other).reason == "stop"
            host.cancel("p", "t")
        assert host.statistics().pools["p"].running == 0


async def test_submit_raises_the_adapters_value_errors_for_every_bound_api(
    nursery: trio.Nursery,
) -> None:
    a, b = await start_upstreams(nursery, 2)
    async with AdapterHost() as host:
        await host.bind("p", "chat", config(a))
        await host.bind("p", "legacy", config(b, api="completions"))
        messages = [{"role": "user", "content": "hi"}]
        with pytest.raises(ValueError, match="completions api takes a prompt"):
            async with host.submit("p", TaskRequest(task_id="t", messages=messages)):
                pass
        assert host.statistics().pools["p"].running == 0
        assert host.statistics().pools["p"].submitted == 0


def counters(host: AdapterHost) -> list[object]:
    """Everything that must be back to zero when no task runs."""
    out: list[object] = []
    for pool in host._pools.values():
        out += [pool.running, len(pool.tasks)]
        for rep in [*pool.replicas.values(), *pool.draining]:
            assert rep.adapter is not None
            out += [rep.running, len(rep.tasks), rep.breaker.trial_out, len(rep.adapter.running())]
    return out


@pytest.mark.parametrize("how", ["host.cancel", "outer scope"])
async def test_counters_return_to_zero_when_cancelled_at_any_checkpoint(
    nursery: trio.Nursery, how: str
) -> None:
    ups = await start_upstreams(nursery, 2)
    session = session_for(["r0", "r1"], ["r0", "r1"])
    zero = None
    outcomes: set[str] = set()
    with trio.fail_after(DEADLINE):
        async with open_host(ups) as host:
            zero = counters(host)
            k = 0
            while not outcomes & {"stop", "too late"}:  # until the task outruns the cancel
                assert k < 5000
                ups[0].script(Fault.status(503), Fault.status(503))  # fail over r0 → r1
                r1 = host._pools["p"].replicas["r1"].breaker
                r1.failed(0.0, 0, may_open=True)  # r1 half-open: the task takes its trial
                r1.poll(r1.open_until or 0.0)
                seen: list[Event] = []
                async with trio.open_nursery() as n:
                    scope = trio.CancelScope()

                    async def consume(
                        scope: trio.CancelScope = scope, seen: list[Event] = seen
                    ) -> None:
                        with scope:
                            async with host.submit(
                                "p", TaskRequest(task_id="t", prompt="hi", session_id=session)
                            ) as events:
                                async for ev in events:
                                    seen.append(ev)

                    async def cancel_after(k: int = k, scope: trio.CancelScope = scope) -> None:
                        if how == "host.cancel":
                            while "t" not in host._pools["p"].tasks:  # entered submit
                                await trio.lowlevel.checkpoint()
                        for _ in range(k):
                            await trio.lowlevel.checkpoint()
                        if how == "host.cancel":
                            if not host.cancel("p", "t"):
                                outcomes.add("too late")
                        else:
                            scope.cancel()

                    n.start_soon(consume)
                    n.start_soon(cancel_after)
                if seen and isinstance(seen[-1], End):  # the outer scope may cut it short
                    check_stream(seen)
                    outcomes.add(end_of(seen).reason)
                assert counters(host) == zero, f"after {k} checkpoints"
                ups[0].replies.clear()
                r1.succeeded(0)
                k += 1 + k // 20
    assert zero is not None
    assert all(not value for value in zero)
    if how == "host.cancel":
        assert "cancelled" in outcomes


async def test_started_then_cancelled_task_reports_the_serving_replica(
    nursery: trio.Nursery,
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[1].script(Fault.stall_after(1))
    session = session_for(["r1"], ["r0", "r1"])
    async with open_host(ups) as host:
        async with host.submit(
            "p", TaskRequest(task_id="t", prompt="hi", session_id=session)
        ) as events:
            started = await events.__anext__()
            assert isinstance(started, Started)
            assert started.replica_id == "r1"
            assert host.cancel("p", "t")
            rest = [ev async for ev in events]
        await ups[1].disconnected.wait()
    assert end_of(rest).reason == "cancelled"


async def test_cancel_with_a_full_buffer_and_a_consumer_that_read_nothing(
    nursery: trio.Nursery,
) -> None:
    (up,) = await start_upstreams(nursery, 1, tokens=[f" w{i}" for i in range(800)])
    async with open_host([up]) as host:
        async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
            await up.wait_quiet(connections=up.connections_open)  # all sent
            await trio.testing.wait_all_tasks_blocked()
            assert host.cancel("p", "t") is True
            first = await events.__anext__()
            assert isinstance(first, End)
            assert (first.reason, first.tokens_out) == ("cancelled", 0)
            with pytest.raises(StopAsyncIteration):
                await events.__anext__()
        assert host.statistics().pools["p"].replicas["r0"].running == 0


async def test_cancel_between_two_replicas_ends_cancelled_without_placing_again(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    # r0 fails before `Started`; the cancel lands in the failover gap (from the narration of
    # the failover: the task has left r0 and is not yet on r1). The next event is
    # End(cancelled), and r1 never gets the request.
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(503), Fault.status(503))
    session = session_for(["r0", "r1"], ["r0", "r1"])
    answers: list[tuple[bool, bool]] = []
    logger.enable("oai_adapter")

    def cancel_on_failover(message: Any) -> None:
        if message.record["extra"].get("action") == "failover":
            task = host._pools["p"].tasks["t"]
            answers.append((task.replica is None, host.cancel("p", "t")))

    sink = logger.add(cancel_on_failover, level="DEBUG", format="{message}")
    try:
        with trio.fail_after(DEADLINE):
            async with open_host(ups) as host:
                seen = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
                stats = host.statistics().pools["p"]
    finally:
        logger.remove(sink)
        logger.disable("oai_adapter")
    assert answers == [(True, True)]  # between replicas, and the cancel took
    assert [type(ev) for ev in seen] == [End]
    assert end_of(seen).reason == "cancelled"
    assert posts(ups[1]) == 0
    assert stats.running == 0
    assert stats.replicas["r1"].running == 0


async def test_host_cancel_closes_the_upstream_before_the_consumer_reads_on(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    # The serving replica's upstream sees the disconnect at once, not when the consumer next
    # asks for an event (a consumer may be slow to come back).
    (up,) = await start_upstreams(nursery, 1)
    up.script(Fault.stall_after(2))
    with trio.fail_after(DEADLINE):
        async with open_host([up]) as host:
            async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
                first = await events.__anext__()
                assert isinstance(first, Started)
                while up.streams_open == 0:
                    await trio.testing.wait_all_tasks_blocked()
                start = trio.current_time()
                assert host.cancel("p", "t") is True
                await up.disconnected.wait()  # before reading any further event
                assert trio.current_time() == start  # at once, not at the idle timeout
                rest = [ev async for ev in events]
            assert host.statistics().pools["p"].replicas["r0"].running == 0
    assert end_of(rest).reason == "cancelled"

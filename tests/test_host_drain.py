"""Bind, rebind, unbind and the host's exit (HOST.md, "API"): the new adapter takes new tasks
while the old one drains; `drain_timeout` ends what is left (after `Started`: Metrics +
End(POOL_UNAVAILABLE); before: a failover); leaving the host ends everything and leaks nothing."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from oai_adapter import (
    AdapterHost,
    End,
    ErrorKind,
    Metrics,
    RetryPolicy,
    Started,
    TaskRequest,
    Token,
)
from oai_adapter._events import Event
from oai_adapter.testing import Fault, check_stream

from .hostkit import (
    DEADLINE,
    POLICY,
    config,
    end_of,
    open_host,
    posts,
    run,
    session_for,
    start_upstreams,
)


async def read_until_tokens(events: Any, n: int) -> list[Event]:
    seen: list[Event] = []
    async for ev in events:
        seen.append(ev)
        if isinstance(ev, Token) and ev.index == n - 1:
            break
    return seen


async def test_rebind_new_adapter_takes_new_tasks_while_the_old_drains(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    old, new = await start_upstreams(nursery, 2)
    old.script(Fault.ok(pace=0.1))
    with trio.fail_after(DEADLINE):
        async with open_host([old]) as host:
            async with host.submit("p", TaskRequest(task_id="t1", prompt="hi")) as events:
                seen = await read_until_tokens(events, 1)
                await host.bind("p", "r0", config(new))  # returns while t1 still runs
                health = await host.health("p")
                assert sorted((r.replica_id, r.draining) for r in health.replicas) == [
                    ("r0", False),
                    ("r0", True),
                ]
                assert host.statistics().pools["p"].replicas["r0"].running == 1
                second = await run(host, TaskRequest(task_id="t2", prompt="hi"))
                seen += [ev async for ev in events]
            await old.wait_quiet()  # drained, then closed: no connection left
            assert host.statistics().pools["p"].replicas["r0"].submitted == 2  # accumulates
    assert check_stream(seen, tokens=old.tokens).reason == "stop"  # t1 was not cut
    assert end_of(second).reason == "stop"
    assert (posts(old), posts(new)) == (1, 1)


@pytest.mark.parametrize("drain", [True, False])
async def test_unbind_of_the_last_replica_the_moment_after_submit_finds_the_task_placed(
    nursery: trio.Nursery, loopback_clock: MockClock, drain: bool
) -> None:
    # The task is placed while entering `submit`, before its driver runs: the unbind that
    # follows at once treats it as running there (drains it, or ends it as unbound), never as
    # a task of a pool with no replica bound.
    (up,) = await start_upstreams(nursery, 1)
    seen: list[Event] = []

    async def consume(events: Any) -> None:
        seen.extend([ev async for ev in events])

    with trio.fail_after(DEADLINE):
        async with open_host([up]) as host:
            async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
                assert host.statistics().pools["p"].replicas["r0"].running == 1
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(consume, events)
                    await host.unbind("p", "r0", drain=drain)  # no checkpoint before this
    end = check_stream(seen)
    if drain:
        assert end.reason == "stop"
        assert isinstance(seen[0], Started)
        assert seen[0].replica_id == "r0"
    else:
        assert end.error is not None
        assert end.error.kind is ErrorKind.POOL_UNAVAILABLE
        assert "r0 was unbound" in end.error.message


@pytest.mark.parametrize("how", ["unbind", "rebind"])
async def test_drain_timeout_ends_a_started_task_with_pool_unavailable(
    nursery: trio.Nursery, loopback_clock: MockClock, how: str
) -> None:
    up, other = await start_upstreams(nursery, 2)
    up.script(Fault.stall_after(3))
    policy = dataclasses.replace(POLICY, drain_timeout=1.0)
    with trio.fail_after(DEADLINE):
        async with open_host([up], policy) as host:
            async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
                seen = await read_until_tokens(events, 3)
                start = trio.current_time()
                async with trio.open_nursery() as n:
                    if how == "unbind":
                        n.start_soon(host.unbind, "p", "r0")
                    else:
                        await host.bind("p", "r0", config(other))
                    seen += [ev async for ev in events]
                took = trio.current_time() - start
            await up.disconnected.wait()
    end = check_stream(seen)
    assert isinstance(seen[-2], Metrics)
    assert end.error is not None
    assert end.error.kind is ErrorKind.POOL_UNAVAILABLE
    assert end.error.retryable
    assert end.error.message == f"replica r0 was {how}ed".replace("rebinded", "rebound").replace(
        "unbinded", "unbound"
    )
    assert end.tokens_out == 3
    assert took == pytest.approx(1.0, abs=0.1)


async def test_drain_timeout_before_started_fails_over_without_a_breaker_failure(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    up, other, fresh = await start_upstreams(nursery, 3)
    up.script(Fault.stall_before_headers())
    policy = dataclasses.replace(POLICY, drain_timeout=1.0)
    with trio.fail_after(DEADLINE):
        async with open_host([up, other], policy) as host:
            session = session_for(["r0"], ["r0", "r1"])
            async with host.submit(
                "p", TaskRequest(task_id="t", prompt="hi", session_id=session)
            ) as events:
                while not up.completion_requests():  # the request is stalled on r0
                    await trio.testing.wait_all_tasks_blocked()
                await host.bind("p", "r0", config(fresh))  # rebind: r0's old adapter drains
                seen = [ev async for ev in events]
            stats = host.statistics().pools["p"]
    check_stream(seen, tokens=other.tokens)
    started = seen[0]
    assert isinstance(started, Started)
    assert started.replica_id == "r1"  # never back to r0, which failed the task
    assert started.attempt == 2
    assert stats.failovers == 1
    assert stats.replicas["r0"].failures == 0
    assert stats.replicas["r0"].consecutive_failures == 0
    assert posts(fresh) == 0


async def test_unbind_without_drain_ends_running_tasks_at_once(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    (up,) = await start_upstreams(nursery, 1)
    up.script(Fault.stall_after(2))
    with trio.fail_after(DEADLINE):
        async with open_host([up]) as host:
            async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
                seen = await read_until_tokens(events, 2)
                start = trio.current_time()
                async with trio.open_nursery() as n:
                    n.start_soon(lambda: host.unbind("p", "r0", drain=False))
                    seen += [ev async for ev in events]
                assert trio.current_time() == start  # no drain_timeout waited
    end = check_stream(seen)
    assert end.error is not None
    assert end.error.message == "replica r0 was unbound"


async def test_unbind_waits_for_running_tasks_then_closes_the_adapter(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    (up,) = await start_upstreams(nursery, 1)
    up.script(Fault.ok(pace=0.05))
    order: list[str] = []
    with trio.fail_after(DEADLINE):
        async with open_host([up]) as host:
            async with trio.open_nursery() as n:

                async def consume(task_status: trio.TaskStatus[None]) -> None:
                    async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
                        started = await events.__anext__()  # placed on r0, streaming
                        assert isinstance(started, Started)
                        task_status.started()
                        end = [ev async for ev in events][-1]
                        assert isinstance(end, End)
                        assert end.reason == "stop", end
                        order.append("ended")

                await n.start(consume)
                await host.unbind("p", "r0")
                order.append("unbound")
            await up.wait_quiet()  # the adapter closed its connection
            with pytest.raises(KeyError):
                await host.unbind("p", "r0")
    assert order == ["ended", "unbound"]


async def test_unbind_whose_caller_is_cancelled_keeps_draining(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    (up,) = await start_upstreams(nursery, 1)
    up.script(Fault.ok(pace=0.05))
    with trio.fail_after(DEADLINE):
        async with open_host([up]) as host:
            async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
                await read_until_tokens(events, 1)
                with trio.move_on_after(0.1) as scope:
                    await host.unbind("p", "r0")
                assert scope.cancelled_caught
                rest = [ev async for ev in events]
            assert end_of(rest).reason == "stop"  # the drain went on; the task was not cut
            await up.wait_quiet()  # and the adapter was closed once it ended
            assert host.statistics().pools["p"].replicas == {}


async def test_rebind_that_fails_leaves_the_old_adapter_serving(nursery: trio.Nursery) -> None:
    (up,) = await start_upstreams(nursery, 1)
    silent = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]  # accepts, never answers
    port = silent.socket.getsockname()[1]
    try:
        async with open_host([up]) as host:
            with trio.move_on_after(0.5) as scope:
                await host.bind(
                    "p",
                    "r0",
                    dataclasses.replace(config(up), base_url=f"http://127.0.0.1:{port}/v1"),
                )
            assert scope.cancelled_caught
            events = await run(host, TaskRequest(task_id="t", prompt="hi"))
            assert isinstance(events[0], Started)
            assert posts(up) == 1
    finally:
        await silent.aclose()


async def test_rebind_starts_the_replica_afresh(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    a, b, c = await start_upstreams(nursery, 3)
    a.script(Fault.status(429, retry_after="100"), Fault.status(500))
    policy = dataclasses.replace(POLICY, breaker_failures=1)
    session = session_for(["r0"], ["r0", "r1"])
    with trio.fail_after(DEADLINE):
        async with open_host([a, b], policy, retry=RetryPolicy(max_attempts=1)) as host:
            await run(host, TaskRequest(task_id="t1", prompt="hi", session_id=session))
            await trio.sleep(101)
            await run(host, TaskRequest(task_id="t2", prompt="hi", session_id=session))
            before = host.statistics().pools["p"].replicas["r0"]
            assert before.breaker == "open"
            await host.bind("p", "r0", config(c, retry=RetryPolicy(max_attempts=1)))
            after = host.statistics().pools["p"].replicas["r0"]
            events = await run(host, TaskRequest(task_id="t3", prompt="hi", session_id=session))
            final = host.statistics().pools["p"].replicas["r0"]
    assert (after.breaker, after.consecutive_failures) == ("closed", 0)
    assert isinstance(events[0], Started)
    assert events[0].replica_id == "r0"  # no breaker, no cool-off: the session is back
    assert (before.submitted, before.failures) == (2, 1)
    assert (final.submitted, final.failures) == (3, 1)  # accumulated per replica id


async def test_leaving_the_host_ends_running_tasks_and_closes_every_adapter(
    nursery: trio.Nursery,
) -> None:
    ups = await start_upstreams(nursery, 2)
    for u in ups:
        u.script(Fault.stall_after(2))
    seen: dict[str, list[Event]] = {}
    await trio.testing.wait_all_tasks_blocked()
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    fds_before = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as outer:
            async with open_host(ups) as host:
                for name in ("a", "b"):

                    async def consume(task_status: trio.TaskStatus[None], name: str = name) -> None:
                        async with host.submit(
                            "p", TaskRequest(task_id=name, prompt="hi")
                        ) as events:
                            seen[name] = await read_until_tokens(events, 2)
                            task_status.started()
                            seen[name] += [ev async for ev in events]

                    await outer.start(consume)
            # the host is left while both tasks run, their consumers outside its block
        for u in ups:
            await u.wait_quiet()
            assert u.connections_open == 0
        await trio.testing.wait_all_tasks_blocked()
    assert trio.lowlevel.current_statistics().tasks_living == tasks_before  # no task left
    assert len(os.listdir("/proc/self/fd")) == fds_before  # no socket left
    for events in seen.values():
        end = check_stream(events)
        assert end.error is not None
        assert end.error.kind is ErrorKind.POOL_UNAVAILABLE
        assert end.error.message == "the host closed"
    stats = host.statistics().pools["p"]
    assert stats.running == 0
    assert all(r.running == 0 for r in stats.replicas.values())
    with pytest.raises(RuntimeError):
        host.submit("p", TaskRequest(task_id="late", prompt="hi"))


async def test_bind_config_naming_another_key_is_a_value_error(nursery: trio.Nursery) -> None:
    (up,) = await start_upstreams(nursery, 1)
    async with AdapterHost(POLICY) as host:
        with pytest.raises(ValueError, match="pool_id"):
            await host.bind("p", "r0", config(up, pool_id="other"))
        with pytest.raises(ValueError, match="replica_id"):
            await host.bind("p", "r0", config(up, replica_id="r9"))
        await host.bind("p", "r0", config(up, pool_id="p", replica_id="r0"))  # the same: fine
        events = await run(host, TaskRequest(task_id="t", prompt="hi"))
    assert isinstance(events[0], Started)
    assert events[0].replica_id == "r0"
    assert up.completion_requests()[0].headers.get("x-correlation-id")


async def test_unknown_keys(nursery: trio.Nursery) -> None:
    (up,) = await start_upstreams(nursery, 1)
    async with open_host([up]) as host:
        with pytest.raises(KeyError):
            host.submit("nope", TaskRequest(task_id="t", prompt="hi"))
        with pytest.raises(KeyError):
            host.cancel("nope", "t")
        with pytest.raises(KeyError):
            await host.health("nope")
        with pytest.raises(KeyError):
            await host.props("nope")
        with pytest.raises(KeyError):
            await host.unbind("p", "r9")
        with pytest.raises(KeyError):
            await host.unbind("nope", "r0")
        assert host.cancel("p", "unknown-task") is False


async def test_slow_consumer_holds_a_draining_replica_through_backpressure(
    nursery: trio.Nursery,
) -> None:
    # The upstream finishes at once, but the consumer reads nothing: the task has not ended on
    # the replica until its events are handed on, so the drain runs out and ends it.
    (up,) = await start_upstreams(nursery, 1, tokens=[f" w{i}" for i in range(800)])
    policy = dataclasses.replace(POLICY, drain_timeout=0.2)
    with trio.fail_after(DEADLINE):
        async with open_host([up], policy) as host:
            async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
                started = await events.__anext__()
                assert isinstance(started, Started)
                await up.wait_quiet(connections=up.connections_open)  # everything sent
                assert host.statistics().pools["p"].replicas["r0"].running == 1
                await host.unbind("p", "r0")
                seen = [started, *[ev async for ev in events]]
    end = check_stream(seen, tokens=up.tokens)
    assert end.error is not None
    assert end.error.message == "replica r0 was unbound"  # not "stop": it was still handing on
    assert 0 < end.tokens_out < 800


async def test_leaving_the_host_mid_drain_ends_a_task_before_started_without_failover(
    nursery: trio.Nursery,
) -> None:
    old, new = await start_upstreams(nursery, 2)
    old.script(Fault.stall_before_headers())
    seen: list[Event] = []
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as outer:
            async with open_host([old]) as host:

                async def consume(task_status: trio.TaskStatus[None]) -> None:
                    async with host.submit("p", TaskRequest(task_id="t", prompt="hi")) as events:
                        task_status.started()
                        seen.extend([ev async for ev in events])

                await outer.start(consume)
                while not old.completion_requests():
                    await trio.testing.wait_all_tasks_blocked()
                await host.bind("p", "r0", config(new))  # the old r0 drains the stalled task
    assert [type(ev) for ev in seen] == [End]
    error = end_of(seen).error
    assert error is not None
    assert error.message == "the host closed"
    assert posts(new) == 0

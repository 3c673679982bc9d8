"""Statements of HOST.md that the topic files did not prove on their own (found by the audit
in docs/traceability.md, "HOST.md → tests"): the public names, what `bind` hands the adapter,
routing while a replica drains, a rebind's own readiness, the "no candidate" message for every
reason, what counts against the breaker, the cool-off and the adapter's own retry, pool health
and props, `Started.replica_id` of a lone adapter, and the route narration's reason."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from loguru import logger
from trio.testing import MockClock

import oai_adapter
from oai_adapter import (
    AdapterConfig,
    ErrorKind,
    HostPolicy,
    OpenAIAdapter,
    RetryPolicy,
    Started,
    TaskRequest,
)
from oai_adapter._events import Event
from oai_adapter.testing import FakeUpstream, Fault, check_stream

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

REPLICAS2 = ["r0", "r1"]
ONE_TRY = RetryPolicy(max_attempts=1)


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Every record of the library (the adapters' and the host's), DEBUG and up."""
    out: list[dict[str, Any]] = []
    logger.enable("oai_adapter")
    sink = logger.add(lambda m: out.append(m.record), level="DEBUG", format="{message}")
    try:
        yield out
    finally:
        logger.remove(sink)
        logger.disable("oai_adapter")


def served_by(events: list[Event]) -> str | None:
    started = events[0]
    assert isinstance(started, Started), events
    return started.replica_id


def test_host_names_are_importable_from_the_package() -> None:
    names = {
        "AdapterHost",
        "HostPolicy",
        "HostStatistics",
        "PoolCapabilities",
        "PoolHealth",
        "PoolStatistics",
        "ReplicaStatistics",
        "ReplicaStatus",
    }
    assert names <= set(oai_adapter.__all__)
    assert all(getattr(oai_adapter, name).__module__.startswith("oai_adapter") for name in names)


async def test_bind_hands_the_adapter_a_config_naming_the_registry_key(
    nursery: trio.Nursery, records: list[dict[str, Any]]
) -> None:
    (up,) = await start_upstreams(nursery, 1)
    async with open_host([up], pool="chat-8b") as host:
        await run(host, TaskRequest(task_id="t", prompt="hi"), pool="chat-8b")
    adapter_records = [
        r["extra"]
        for r in records
        if r["extra"].get("actor") != "adapter-host" and r["extra"].get("job_id") == "t"
    ]
    assert adapter_records  # the adapter narrates the task with the key it was bound under
    assert {(e["pool_id"], e["replica_id"]) for e in adapter_records} == {("chat-8b", "r0")}


async def test_a_draining_replica_gets_no_new_task(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.ok(pace=0.1))  # well within the drain timeout (5 s)
    session = session_for(["r0"], REPLICAS2)
    with trio.fail_after(DEADLINE):
        async with open_host(ups) as host:
            async with host.submit(
                "p", TaskRequest(task_id="a", prompt="hi", session_id=session)
            ) as events:
                first = await events.__anext__()
                async with trio.open_nursery() as n:
                    n.start_soon(host.unbind, "p", "r0")
                    await trio.testing.wait_all_tasks_blocked()  # r0 drains task a
                    second = await run(
                        host, TaskRequest(task_id="b", prompt="hi", session_id=session)
                    )
                    rest = [ev async for ev in events]
    assert served_by([first]) == "r0"
    end = check_stream([first, *rest])
    assert end.reason == "stop", end  # a drained to its end on r0
    assert served_by(second) == "r1"  # its session's replica is draining
    assert (posts(ups[0]), posts(ups[1])) == (1, 1)


@pytest.mark.parametrize("was_ready", [True, False])
async def test_rebind_takes_readiness_from_its_own_first_probe(
    nursery: trio.Nursery, was_ready: bool
) -> None:
    old, new = await start_upstreams(nursery, 2)
    old.loading = not was_ready
    new.loading = was_ready
    async with open_host([old]) as host:  # no background probe runs (probe_interval 60 s)
        assert host.capabilities()["p"].replicas_ready == (1 if was_ready else 0)
        await host.bind("p", "r0", config(new))
        assert host.capabilities()["p"].replicas_ready == (0 if was_ready else 1)


async def test_replica_that_did_not_find_the_model_is_used_again_once_a_probe_finds_it(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(404))
    policy = dataclasses.replace(POLICY, probe_interval=1.0)
    session = session_for(["r0"], REPLICAS2)
    async with open_host(ups, policy) as host:
        first = await run(host, TaskRequest(task_id="a", prompt="hi", session_id=session))
        not_ready = host.capabilities()["p"].replicas_ready
        await trio.sleep(1.5)  # a background probe finds the model on r0
        again = await run(host, TaskRequest(task_id="b", prompt="hi", session_id=session))
    assert served_by(first) == "r1"
    assert not_ready == 1
    assert served_by(again) == "r0"


async def test_no_candidate_message_names_each_reason_and_the_earliest_retry(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    a, b, c = await start_upstreams(nursery, 3)
    b.script(Fault.status(500))
    c.script(Fault.ok(pace=1.0))
    policy = dataclasses.replace(POLICY, breaker_failures=1, breaker_open=10.0)
    replicas = ["r0", "r1", "r2"]
    with trio.fail_after(DEADLINE):
        async with open_host([a, b, c], policy, retry=ONE_TRY) as host:
            # r1 fails a task: its breaker opens for 10 s (the task fails over)
            failed_over = await run(
                host,
                TaskRequest(
                    task_id="t1", prompt="hi", session_id=session_for(["r1", "r0"], replicas)
                ),
            )
            a.loading = True
            await host.health("p")  # r0: not ready
            async with host.submit("p", TaskRequest(task_id="t2", prompt="hi")) as events:
                first = await events.__anext__()  # on r2, the one candidate left
                async with trio.open_nursery() as n:
                    n.start_soon(host.unbind, "p", "r2")
                    await trio.testing.wait_all_tasks_blocked()  # r2 drains t2
                    await trio.sleep(2.0)
                    refused = await run(host, TaskRequest(task_id="t3", prompt="hi"))
                    now = trio.current_time()
                    open_until = host.statistics().pools["p"].replicas["r1"].open_until
                    host.cancel("p", "t2")
                    [ev async for ev in events]
    assert served_by(failed_over) == "r0"
    assert served_by([first]) == "r2"
    assert [type(ev).__name__ for ev in refused] == ["End"]
    error = end_of(refused).error
    assert error is not None
    assert error.kind is ErrorKind.POOL_UNAVAILABLE
    assert error.retryable
    assert "r0: not ready" in error.message
    assert "r1: breaker open for" in error.message
    assert "r2: draining" in error.message
    assert open_until is not None
    assert error.retry_after_ms == math.ceil((open_until - now) * 1000)  # r1, the only one known
    assert 0 < error.retry_after_ms <= 10_000


async def test_a_429_is_not_a_breaker_failure(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(429))
    policy = dataclasses.replace(POLICY, breaker_failures=1)
    session = session_for(["r0"], REPLICAS2)
    async with open_host(ups, policy, retry=ONE_TRY) as host:
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
        r0 = host.statistics().pools["p"].replicas["r0"]
    assert served_by(events) == "r1"  # it failed over…
    assert (r0.breaker, r0.failures, r0.consecutive_failures) == ("closed", 0, 0)  # …no failure


async def test_the_adapters_own_retry_after_a_429_stays_on_the_replica(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(429, retry_after="1"))
    session = session_for(["r0"], REPLICAS2)
    retry = RetryPolicy(max_attempts=2, base=0.01, cap=5.0)
    async with open_host(ups, retry=retry) as host:
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
        next_task = await run(host, TaskRequest(task_id="u", prompt="hi", session_id=session))
    started = events[0]
    assert isinstance(started, Started)
    assert (started.replica_id, started.attempt) == ("r0", 2)  # the retry is not a new task
    assert served_by(next_task) == "r0"  # and the task's success left no cool-off
    assert (posts(ups[0]), posts(ups[1])) == (3, 0)


async def test_pool_is_not_ready_when_no_replica_is_a_candidate_now(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    ups = await start_upstreams(nursery, 2)
    for u in ups:
        u.script(Fault.status(429, retry_after="5"))
    async with open_host(ups, retry=ONE_TRY) as host:
        await run(host, TaskRequest(task_id="a", prompt="hi"))  # both replicas cool off
        cooling = await host.health("p")
        await trio.sleep(5.0)
        back = await host.health("p")
    assert (cooling.live, cooling.ready) == (True, False)
    assert all(r.ready for r in cooling.replicas)  # every probe says ready: not enough
    assert (back.live, back.ready) == (True, True)


async def test_props_slots_are_none_when_no_ready_replica_says(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 2, flavor="openai")
    async with open_host(ups) as host:
        props = await host.props("p")
    assert (props.slots_total, props.slots_free) == (None, None)
    assert props.model == ups[0].model


@pytest.mark.parametrize("replica_id", ["r-7", None])
async def test_lone_adapter_started_names_its_configs_replica(
    upstream: FakeUpstream, replica_id: str | None
) -> None:
    config = AdapterConfig(base_url=upstream.base_url, model=upstream.model, replica_id=replica_id)
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(config) as adapter:
            async with adapter.submit(TaskRequest(task_id="t", prompt="hi")) as events:
                started = await events.__anext__()
                [ev async for ev in events]
    assert isinstance(started, Started)
    assert started.replica_id == replica_id


async def test_a_drain_before_started_spends_the_budget_like_any_failover(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    up, other, fresh = await start_upstreams(nursery, 3)
    up.script(Fault.stall_before_headers())
    policy = HostPolicy(
        budget_percent=0.0, budget_min_per_s=0.0, probe_interval=60.0, drain_timeout=1.0
    )
    session = session_for(["r0"], REPLICAS2)
    with trio.fail_after(DEADLINE):
        async with open_host([up, other], policy) as host:
            async with host.submit(
                "p", TaskRequest(task_id="t", prompt="hi", session_id=session)
            ) as events:
                while not up.completion_requests():
                    await trio.testing.wait_all_tasks_blocked()
                await host.bind("p", "r0", config(fresh))  # the old r0 drains, then evicts
                seen = [ev async for ev in events]
            stats = host.statistics().pools["p"]
    error = end_of(seen).error
    assert error is not None
    assert error.kind is ErrorKind.POOL_UNAVAILABLE
    assert error.message == "replica r0 was rebound"
    assert (stats.failovers, stats.budget_refused) == (0, 1)
    assert posts(other) == 0


async def test_route_narration_says_why_the_replica_was_chosen(
    nursery: trio.Nursery, records: list[dict[str, Any]]
) -> None:
    ups = await start_upstreams(nursery, 2)
    async with open_host(ups) as host:
        await run(host, TaskRequest(task_id="s", prompt="hi", session_id="user-42"))
        await run(host, TaskRequest(task_id="l", prompt="hi"))
    routes = {
        r["extra"]["job_id"]: r["message"] for r in records if r["extra"].get("action") == "route"
    }
    assert routes["s"].endswith(": session affinity")
    assert "least loaded (0/" in routes["l"]

"""Placement and failover through a pool of real upstreams (HOST.md, "Which replica serves a
task" and "Failover, retry budget, breaker"): one stream per task, `Started` naming the
serving replica and counting every attempt, failover only before `Started`, never back to a
replica that failed the task, within `max_failovers`, the total deadline and the budget."""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio
from trio.testing import MockClock

from oai_adapter import (
    AdapterHost,
    End,
    ErrorKind,
    HostPolicy,
    Metrics,
    RetryPolicy,
    Started,
    TaskRequest,
    Timeouts,
)
from oai_adapter.testing import Fault, Reply, check_stream

from .hostkit import POLICY, config, end_of, open_host, posts, run, session_for, start_upstreams

REPLICAS2 = ["r0", "r1"]


async def test_started_names_the_serving_replica_and_the_stream_is_whole(
    nursery: trio.Nursery,
) -> None:
    ups = await start_upstreams(nursery, 2)
    async with open_host(ups) as host:
        session = session_for(["r1"], REPLICAS2)
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
    check_stream(events, tokens=ups[1].tokens)
    started = events[0]
    assert isinstance(started, Started)
    assert started.replica_id == "r1"
    assert started.attempt == 1
    assert (posts(ups[0]), posts(ups[1])) == (0, 1)
    assert end_of(events).reason == "stop"


async def test_failover_before_started_counts_every_attempt_of_every_replica(
    nursery: trio.Nursery,
) -> None:
    ups = await start_upstreams(nursery, 2)
    # r0: a 503 (retried by its adapter), then an empty 2xx stream (WORKER_RESET, not retried)
    ups[0].script(Fault.status(503), Fault.eof_after(None))
    async with open_host(ups) as host:
        session = session_for(["r0", "r1"], REPLICAS2)
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
        stats = host.statistics().pools["p"]
    check_stream(events, tokens=ups[1].tokens)
    started, metrics = events[0], events[-2]
    assert isinstance(started, Started)
    assert isinstance(metrics, Metrics)
    assert started.replica_id == "r1"
    assert started.attempt == 3  # two on r0, one on r1
    assert metrics.retries == 2
    assert stats.failovers == 1
    assert stats.replicas["r0"].failures == 1
    assert stats.replicas["r1"].failures == 0
    assert (posts(ups[0]), posts(ups[1])) == (2, 1)


FAILOVER_FAULTS = [
    pytest.param([Fault.status(503)] * 2, ErrorKind.POOL_UNAVAILABLE, id="503"),
    pytest.param([Fault.status(429)] * 2, ErrorKind.ADMISSION_REJECT, id="429"),
    pytest.param([Fault.status(500)], ErrorKind.UPSTREAM_ERROR, id="500"),
    pytest.param([Fault.eof_after(None)], ErrorKind.WORKER_RESET, id="reset"),
    pytest.param([Fault.not_event_stream()], ErrorKind.PROTOCOL, id="protocol"),
    pytest.param([Fault.status(404)], ErrorKind.UPSTREAM_NOT_FOUND, id="404"),
    pytest.param([Fault.stall_after_headers()], ErrorKind.DECODE_TIMEOUT, id="first-token"),
]


@pytest.mark.parametrize(("faults", "kind"), FAILOVER_FAULTS)
async def test_kind_that_blames_the_replica_fails_over(
    nursery: trio.Nursery, loopback_clock: MockClock, faults: list[Reply], kind: ErrorKind
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(*faults)
    ups[1].script(*faults)  # r1 fails the same way: the End carries r1's error, as it is
    async with open_host(ups, HostPolicy(budget_min_per_s=1000.0, probe_interval=600.0)) as host:
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id="x"))
        stats = host.statistics().pools["p"]
    end = end_of(events)
    assert len(events) == 1  # no Started: one End carrying the last error
    assert end.error is not None
    assert end.error.kind is kind
    assert stats.failovers == 1
    assert posts(ups[0]) == posts(ups[1]) == len(faults)  # never back to a failed replica


NO_FAILOVER_FAULTS = [
    pytest.param(Fault.status(400), ErrorKind.INVALID_PARAMS, id="400"),
    pytest.param(Fault.status(401), ErrorKind.UPSTREAM_AUTH, id="401"),
    pytest.param(
        Fault.status(302, headers=[("location", "http://x/")]), ErrorKind.POLICY, id="redirect"
    ),
]


@pytest.mark.parametrize(("fault", "kind"), NO_FAILOVER_FAULTS)
async def test_kind_that_does_not_blame_the_replica_ends_the_task(
    nursery: trio.Nursery, fault: Reply, kind: ErrorKind
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(fault)
    async with open_host(ups) as host:
        session = session_for(["r0"], REPLICAS2)
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
        stats = host.statistics().pools["p"]
    end = end_of(events)
    assert end.error is not None
    assert end.error.kind is kind
    assert (posts(ups[0]), posts(ups[1])) == (1, 0)
    assert stats.failovers == 0
    assert stats.replicas["r0"].failures == 0  # neither success nor failure


async def test_no_failover_after_started(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.reset_after(3))
    async with open_host(ups) as host:
        session = session_for(["r0"], REPLICAS2)
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
        stats = host.statistics().pools["p"]
    end = check_stream(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.WORKER_RESET
    assert end.tokens_out == 3
    assert isinstance(events[-2], Metrics)
    assert posts(ups[1]) == 0
    assert stats.failovers == 0
    assert stats.replicas["r0"].failures == 1  # it reached Started, then failed: counts


async def test_max_failovers_limits_the_replicas_tried(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 4)
    for u in ups:
        u.script(Fault.status(500))
    policy = dataclasses.replace(POLICY, max_failovers=1)
    async with open_host(ups, policy) as host:
        events = await run(host, TaskRequest(task_id="t", prompt="hi"))
        stats = host.statistics().pools["p"]
    assert end_of(events).error is not None
    assert sum(posts(u) for u in ups) == 2
    assert stats.failovers == 1


async def test_failover_goes_only_to_untried_replicas(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 3)
    for u in ups:
        u.script(Fault.status(500), Fault.status(500))
    policy = dataclasses.replace(POLICY, max_failovers=10)
    async with open_host(ups, policy) as host:
        events = await run(host, TaskRequest(task_id="t", prompt="hi"))
        stats = host.statistics().pools["p"]
    end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.UPSTREAM_ERROR  # the last replica's error, as it is
    assert [posts(u) for u in ups] == [1, 1, 1]
    assert stats.failovers == 2


async def test_metrics_count_from_entering_host_submit(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.stall_after_headers())  # DECODE_TIMEOUT after first_token (2 s)
    timeouts = Timeouts(connect=5.0, first_token=2.0, idle=5.0, total=60.0)
    async with open_host(ups, timeouts=timeouts) as host:
        session = session_for(["r0"], REPLICAS2)
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
    check_stream(events, tokens=ups[1].tokens)
    metrics = events[-2]
    assert isinstance(metrics, Metrics)
    assert metrics.ttft_ms is not None
    assert metrics.ttft_ms >= 2000.0  # r0's 2 s are part of the task's time to first token
    assert metrics.duration_ms >= metrics.ttft_ms
    assert metrics.retries == 1


async def test_first_replicas_total_timeout_bounds_the_whole_task(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.stall_after_headers())
    ups[1].script(Fault.stall_after_headers())
    async with AdapterHost(POLICY) as host:
        await host.bind("p", "r0", config(ups[0], timeouts=Timeouts(first_token=2.0, total=3.0)))
        await host.bind("p", "r1", config(ups[1]))
        session = session_for(["r0"], REPLICAS2)
        start = trio.current_time()
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
        took = trio.current_time() - start
    end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.DEADLINE_UNMET  # r1's own total (60 s) never came
    assert took == pytest.approx(3.0, abs=0.1)
    assert (posts(ups[0]), posts(ups[1])) == (1, 1)


async def test_budget_refusing_a_retry_ends_the_task_without_failover(
    nursery: trio.Nursery,
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(503), Fault.status(503))
    policy = HostPolicy(budget_percent=0.0, budget_min_per_s=0.0, probe_interval=60.0)
    async with open_host(ups, policy) as host:
        session = session_for(["r0"], REPLICAS2)
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
        stats = host.statistics().pools["p"]
    end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.POOL_UNAVAILABLE
    assert end.error.retryable
    assert (posts(ups[0]), posts(ups[1])) == (1, 0)  # no retry on r0, no failover to r1
    assert stats.budget_refused == 1
    assert stats.failovers == 0


async def test_budget_refusing_a_failover_ends_the_task(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(500))
    policy = HostPolicy(budget_percent=0.0, budget_min_per_s=0.0, probe_interval=60.0)
    async with open_host(ups, policy) as host:
        session = session_for(["r0"], REPLICAS2)
        events = await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
        stats = host.statistics().pools["p"]
    end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.UPSTREAM_ERROR
    assert (posts(ups[0]), posts(ups[1])) == (1, 0)
    assert stats.budget_refused == 1


async def test_a_host_task_is_one_submit_however_many_replicas_it_tries(
    nursery: trio.Nursery,
) -> None:
    # 100 % of one submit: one failover. Were every adapter's submit counted as well, the
    # second replica's submit would buy a second failover and all three would be tried.
    ups = await start_upstreams(nursery, 3)
    for u in ups:
        u.script(Fault.status(500))
    policy = HostPolicy(
        budget_percent=100.0, budget_min_per_s=0.0, max_failovers=5, probe_interval=60.0
    )
    async with open_host(ups, policy, retry=RetryPolicy(max_attempts=1)) as host:
        events = await run(host, TaskRequest(task_id="t", prompt="hi"))
        stats = host.statistics().pools["p"]
    assert end_of(events).error is not None
    assert sum(posts(u) for u in ups) == 2
    assert stats.failovers == 1
    assert stats.budget_refused == 1


async def test_adapters_under_a_host_spend_the_pools_budget(nursery: trio.Nursery) -> None:
    # The adapter's own RetryPolicy budget would allow retries; the pool's (0) refuses them.
    ups = await start_upstreams(nursery, 1)
    ups[0].script(Fault.status(503), Fault.status(503))
    policy = HostPolicy(budget_percent=0.0, budget_min_per_s=0.0, probe_interval=60.0)
    async with open_host(
        ups, policy, retry=RetryPolicy(max_attempts=3, base=0.01, cap=0.02)
    ) as host:
        events = await run(host, TaskRequest(task_id="t", prompt="hi"))
    assert end_of(events).error is not None
    assert posts(ups[0]) == 1


async def test_task_with_no_replica_bound_ends_pool_unavailable(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 1)
    async with open_host(ups) as host:
        await host.unbind("p", "r0")
        events = await run(host, TaskRequest(task_id="t", prompt="hi"))
    end = end_of(events)
    assert len(events) == 1
    assert end.error is not None
    assert end.error.kind is ErrorKind.POOL_UNAVAILABLE
    assert end.error.retryable
    assert "no replica is bound" in end.error.message


async def test_no_candidate_says_why_for_each_replica_and_when_to_retry(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    ups = await start_upstreams(nursery, 2)
    for u in ups:
        u.script(Fault.status(429, retry_after="5"))
    async with open_host(ups, retry=RetryPolicy(max_attempts=1)) as host:
        first = await run(host, TaskRequest(task_id="a", prompt="hi"))
        second = await run(host, TaskRequest(task_id="b", prompt="hi"))
        await trio.sleep(5.0)  # the cool-off passes
        third = await run(host, TaskRequest(task_id="c", prompt="hi"))
    error = end_of(first).error
    assert error is not None
    assert error.kind is ErrorKind.ADMISSION_REJECT  # the last replica's error, as it is
    error = end_of(second).error
    assert error is not None
    assert error.kind is ErrorKind.POOL_UNAVAILABLE
    assert error.retryable
    assert "r0: cooling off" in error.message
    assert "r1: cooling off" in error.message
    assert error.retry_after_ms is not None
    assert 0 < error.retry_after_ms <= 5000
    assert end_of(third).reason == "stop"


async def test_429_without_retry_after_fails_over_but_does_not_cool_off(
    nursery: trio.Nursery,
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(429))
    async with open_host(ups, retry=RetryPolicy(max_attempts=1)) as host:
        session = session_for(["r0"], REPLICAS2)
        first = await run(host, TaskRequest(task_id="a", prompt="hi", session_id=session))
        second = await run(host, TaskRequest(task_id="b", prompt="hi", session_id=session))
    assert isinstance(first[0], Started)
    assert first[0].replica_id == "r1"
    assert isinstance(second[0], Started)
    assert second[0].replica_id == "r0"  # not cooling off: the session is back on r0


async def test_upstream_not_found_marks_the_replica_not_ready(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(404))
    async with open_host(ups) as host:
        session = session_for(["r0"], REPLICAS2)
        first = await run(host, TaskRequest(task_id="a", prompt="hi", session_id=session))
        caps = host.capabilities()["p"]
        second = await run(host, TaskRequest(task_id="b", prompt="hi", session_id=session))
    assert isinstance(first[0], Started)
    assert first[0].replica_id == "r1"
    assert caps.replicas_ready == 1
    assert isinstance(second[0], Started)
    assert second[0].replica_id == "r1"  # r0 not ready until a probe finds the model
    assert posts(ups[0]) == 1


async def test_least_loaded_spreads_concurrent_tasks(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 2, pace=0.001)
    served: list[str | None] = []
    async with open_host(ups) as host:
        async with trio.open_nursery() as tasks:
            for i in range(4):

                async def one(i: int = i) -> None:
                    events = await run(host, TaskRequest(task_id=f"t{i}", prompt="hi"))
                    assert isinstance(events[0], Started)
                    served.append(events[0].replica_id)

                tasks.start_soon(one)
    assert sorted(served) == ["r0", "r0", "r1", "r1"]


async def test_least_loaded_uses_slots_total_as_capacity(nursery: trio.Nursery) -> None:
    small, big = await start_upstreams(nursery, 1, slots=1) + await start_upstreams(
        nursery, 1, slots=8
    )
    for u in (small, big):
        u.pace = 0.001
    served: list[str | None] = []
    async with open_host([small, big]) as host:
        async with trio.open_nursery() as tasks:
            for i in range(5):

                async def one(i: int = i) -> None:
                    events = await run(host, TaskRequest(task_id=f"t{i}", prompt="hi"))
                    assert isinstance(events[0], Started)
                    served.append(events[0].replica_id)

                tasks.start_soon(one)
    # r0 has 1 slot, r1 has 8: after r0 takes one task (1/1), every other goes to r1
    assert served.count("r0") <= 1


async def test_session_affinity_keeps_a_session_on_its_replica(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 3)
    replicas = ["r0", "r1", "r2"]
    session = session_for(["r2"], replicas)
    async with open_host(ups) as host:
        served = []
        for i in range(5):
            events = await run(host, TaskRequest(task_id=f"t{i}", prompt="hi", session_id=session))
            assert isinstance(events[0], Started)
            served.append(events[0].replica_id)
    assert served == ["r2"] * 5


async def test_end_of_a_failed_task_is_retryable_like_the_adapters(nursery: trio.Nursery) -> None:
    ups = await start_upstreams(nursery, 1)
    ups[0].script(Fault.status(503), Fault.status(503))
    async with open_host(ups) as host:
        events = await run(host, TaskRequest(task_id="t", prompt="hi"))
    end = end_of(events)
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.retryable


async def test_cool_off_is_capped_at_breaker_open_max(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(429, retry_after="1000"))
    policy = dataclasses.replace(POLICY, breaker_open=5.0, breaker_open_max=20.0)
    session = session_for(["r0"], REPLICAS2)
    async with open_host(ups, policy, retry=RetryPolicy(max_attempts=1)) as host:
        await run(host, TaskRequest(task_id="a", prompt="hi", session_id=session))
        await trio.sleep(19.0)
        cooling = await run(host, TaskRequest(task_id="b", prompt="hi", session_id=session))
        await trio.sleep(1.0)
        back = await run(host, TaskRequest(task_id="c", prompt="hi", session_id=session))
    assert isinstance(cooling[0], Started)
    assert cooling[0].replica_id == "r1"
    assert isinstance(back[0], Started)
    assert back[0].replica_id == "r0"  # 20 s, not 1000


async def test_deadline_unmet_is_not_a_breaker_failure(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    (up,) = await start_upstreams(nursery, 1)
    up.script(Fault.stall_after(1))
    async with open_host([up], timeouts=Timeouts(idle=50.0, total=3.0)) as host:
        events = await run(host, TaskRequest(task_id="t", prompt="hi"))
        r0 = host.statistics().pools["p"].replicas["r0"]
    error = end_of(events).error
    assert error is not None
    assert error.kind is ErrorKind.DEADLINE_UNMET
    assert (r0.failures, r0.consecutive_failures) == (0, 0)


async def test_many_concurrent_tasks_with_random_faults_each_get_one_whole_stream(
    nursery: trio.Nursery,
) -> None:
    ups = await start_upstreams(nursery, 3)
    faults = [
        Fault.ok(),
        Fault.status(503),
        Fault.status(500),
        Fault.status(429),
        Fault.status(400),
        Fault.eof_after(None),
        Fault.reset_after(2),
        Fault.not_event_stream(),
    ]
    rng = random.Random(7)
    policy = dataclasses.replace(POLICY, breaker_failures=1000)
    outcomes: list[str] = []
    async with open_host(ups, policy) as host:
        async with trio.open_nursery() as tasks:
            for i in range(60):
                cid = f"c{i}"
                for u in ups:  # each replica plays its own fault for this task's attempts
                    u.script_for(cid, *rng.choices(faults, k=2))

                async def one(i: int = i, cid: str = cid) -> None:
                    req = TaskRequest(task_id=f"t{i}", prompt="hi", correlation_id=cid)
                    events = await run(host, req)
                    end = check_stream(events)
                    if isinstance(events[0], Started):
                        assert events[0].replica_id in {"r0", "r1", "r2"}
                        metrics = events[-2]
                        assert isinstance(metrics, Metrics)
                        assert metrics.retries == events[0].attempt - 1
                    outcomes.append(end.reason)

                tasks.start_soon(one)
        stats = host.statistics().pools["p"]
    assert len(outcomes) == 60
    assert {"stop", "error"} <= set(outcomes)
    assert (stats.submitted, stats.running) == (60, 0)
    assert all(r.running == 0 for r in stats.replicas.values())

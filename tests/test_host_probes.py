"""Probes, readiness, capabilities, health and props of a pool (HOST.md, "Capabilities, health,
props"), and the breaker with the clock through a real pool."""

from __future__ import annotations

import dataclasses
import time

import pytest
import trio
from trio.testing import MockClock

from oai_adapter import (
    AdapterHost,
    ErrorKind,
    HostPolicy,
    RetryPolicy,
    Started,
    TaskRequest,
    Timeouts,
)
from oai_adapter.testing import FakeUpstream, Fault, Plan, Sleep

from .hostkit import DEADLINE, POLICY, config, end_of, open_host, run, session_for, start_upstreams


def probe_paths(upstream: object) -> list[str]:
    return [r.path for r in upstream.requests if r.method == "GET"]  # type: ignore[attr-defined]


async def test_bind_probes_health_props_and_engine_version_once(nursery: trio.Nursery) -> None:
    llama, vllm = await start_upstreams(nursery, 1) + await start_upstreams(
        nursery, 1, flavor="vllm"
    )
    async with open_host([llama, vllm]) as host:
        caps = host.capabilities()["p"]
    assert "/v1/models" in probe_paths(llama)
    assert "/props" in probe_paths(llama)
    assert "/version" in probe_paths(vllm)
    assert caps.engines == ("llama.cpp b1-0c1e570", "vllm 0.11.0")
    assert caps.replicas_ready == caps.replicas_total == 2


async def test_background_probes_run_every_probe_interval(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    (up,) = await start_upstreams(nursery, 1)
    policy = dataclasses.replace(POLICY, probe_interval=2.0)
    async with open_host([up], policy) as host:
        assert probe_paths(up).count("/v1/models") == 1
        await trio.sleep(7.0)
        assert probe_paths(up).count("/v1/models") == 4  # at bind, then at 2, 4 and 6 s
        assert host.capabilities()["p"].replicas_ready == 1


async def test_replica_whose_first_probe_fails_is_bound_not_ready_and_used_once_back(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    down, up = await start_upstreams(nursery, 2)
    down.loading = True  # llama.cpp's 503 "Loading model"
    policy = dataclasses.replace(POLICY, probe_interval=1.0)
    async with open_host([down, up], policy) as host:
        caps = host.capabilities()["p"]
        assert (caps.replicas_ready, caps.replicas_total) == (1, 2)
        session = session_for(["r0"], ["r0", "r1"])
        first = await run(host, TaskRequest(task_id="a", prompt="hi", session_id=session))
        down.loading = False
        await trio.sleep(1.5)  # one background probe round
        second = await run(host, TaskRequest(task_id="b", prompt="hi", session_id=session))
    assert isinstance(first[0], Started)
    assert first[0].replica_id == "r1"
    assert isinstance(second[0], Started)
    assert second[0].replica_id == "r0"  # ready again: its session is back


async def test_first_probe_is_bounded_by_the_connect_timeout(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    silent = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]  # accepts, never answers
    port = silent.socket.getsockname()[1]
    (up,) = await start_upstreams(nursery, 1)
    cfg = dataclasses.replace(
        config(up, timeouts=Timeouts(connect=1.5)), base_url=f"http://127.0.0.1:{port}/v1"
    )
    try:
        with trio.fail_after(DEADLINE):
            async with AdapterHost(POLICY) as host:
                start = trio.current_time()
                await host.bind("p", "r0", cfg)
                assert trio.current_time() - start == pytest.approx(1.5)
                health = await host.health("p")
                assert not health.ready
                events = await run(host, TaskRequest(task_id="t", prompt="hi"))
                error = end_of(events).error
                assert error is not None
                assert error.kind is ErrorKind.POOL_UNAVAILABLE
                assert "r0: not ready" in error.message
    finally:
        await silent.aclose()


async def test_capabilities_summarise_the_ready_replicas(nursery: trio.Nursery) -> None:
    a, b, c = await start_upstreams(nursery, 3, n_ctx=4096)
    a.slots, b.slots, c.slots = 2, 4, 8
    c.loading = True
    async with AdapterHost(POLICY) as host:
        await host.bind("p", "r0", config(a))
        await host.bind("p", "r1", config(b, api="completions"))
        await host.bind("p", "r2", config(c))
        before = time.time()
        caps = host.capabilities()
    pool = caps["p"]
    assert pool.model == a.model
    assert pool.context_length == 4096 // 4  # llama.cpp's n_ctx per slot, smallest of r0, r1
    assert pool.slots_total == 6  # r2 is not ready: not counted
    assert (pool.replicas_ready, pool.replicas_total) == (2, 3)
    assert pool.apis == ("chat", "completions")
    assert pool.engines == ("llama.cpp b1-0c1e570",)
    assert pool.updated_at <= before


async def test_health_and_props_probe_now(nursery: trio.Nursery) -> None:
    a, b = await start_upstreams(nursery, 2)
    a.slots, b.slots = 2, 4
    async with open_host([a, b]) as host:
        healthy = await host.health("p")
        b.loading = True  # nothing notices until a probe: health() probes now
        degraded = await host.health("p")
        props = await host.props("p")
    assert (healthy.live, healthy.ready) == (True, True)
    assert [(r.replica_id, r.ready) for r in degraded.replicas] == [("r0", True), ("r1", False)]
    assert degraded.ready
    assert "r1: not ready" in degraded.detail
    r0 = degraded.replicas[0]
    assert (r0.breaker, r0.running, r0.draining, r0.open_until) == ("closed", 0, False, None)
    assert props.slots_total == 2  # summed over ready replicas only
    assert props.slots_free == 2
    assert props.model == a.model
    assert props.context_length == a.n_ctx // 2


async def test_breaker_opens_half_opens_and_closes_with_the_clock(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(500), Fault.status(500), Fault.status(500))
    policy = dataclasses.replace(POLICY, breaker_failures=2, breaker_open=10.0)
    session = session_for(["r0"], ["r0", "r1"])

    def req(i: int) -> TaskRequest:
        return TaskRequest(task_id=f"t{i}", prompt="hi", session_id=session)

    def served(events: list[object]) -> str | None:
        assert isinstance(events[0], Started)
        return events[0].replica_id

    async with open_host(ups, policy, retry=RetryPolicy(max_attempts=1)) as host:
        assert served(await run(host, req(1))) == "r1"  # r0 failed it: 1 failure
        assert served(await run(host, req(2))) == "r1"  # 2 failures: open
        opened = trio.current_time()
        r0 = host.statistics().pools["p"].replicas["r0"]
        assert r0.breaker == "open"
        assert r0.open_until == pytest.approx(opened + 10.0, abs=0.1)
        assert served(await run(host, req(3))) == "r1"  # open: r0 is not tried
        assert len(ups[0].completion_requests()) == 2
        await trio.sleep(10.0)
        assert host.statistics().pools["p"].replicas["r0"].breaker == "half_open"
        assert served(await run(host, req(4))) == "r1"  # the trial fails: open again, 20 s
        r0 = host.statistics().pools["p"].replicas["r0"]
        assert r0.breaker == "open"
        assert r0.open_until == pytest.approx(trio.current_time() + 20.0, abs=0.1)
        await trio.sleep(20.0)
        assert served(await run(host, req(5))) == "r0"  # the trial succeeds: closed
        r0 = host.statistics().pools["p"].replicas["r0"]
        assert (r0.breaker, r0.consecutive_failures, r0.failures) == ("closed", 0, 3)


async def test_breaker_never_ejects_more_than_max_ejected_of_the_pool(
    nursery: trio.Nursery,
) -> None:
    ups = await start_upstreams(nursery, 2)
    for u in ups:
        u.script(*[Fault.status(500)] * 4)
    policy = dataclasses.replace(POLICY, breaker_failures=2, max_failovers=1)
    async with open_host(ups, policy, retry=RetryPolicy(max_attempts=1)) as host:
        for i in range(2):
            await run(host, TaskRequest(task_id=f"t{i}", prompt="hi"))
        states = sorted(r.breaker for r in host.statistics().pools["p"].replicas.values())
    assert states == ["closed", "open"]  # 2 failures each, but half the pool at most


async def test_one_replica_pool_is_never_ejected(nursery: trio.Nursery) -> None:
    (up,) = await start_upstreams(nursery, 1)
    up.script(*[Fault.status(500)] * 3)
    policy = dataclasses.replace(POLICY, breaker_failures=1, max_ejected=1.0)
    async with open_host([up], policy, retry=RetryPolicy(max_attempts=1)) as host:
        for i in range(3):
            error = end_of(await run(host, TaskRequest(task_id=f"t{i}", prompt="hi"))).error
            assert error is not None
            assert error.kind is ErrorKind.UPSTREAM_ERROR  # its failures go to the caller
        r0 = host.statistics().pools["p"].replicas["r0"]
    assert (r0.breaker, r0.consecutive_failures) == ("closed", 3)
    assert len(up.completion_requests()) == 3


async def test_half_open_trial_that_ends_as_neither_frees_the_trial(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(500), Fault.status(400))
    policy = dataclasses.replace(POLICY, breaker_failures=1, breaker_open=5.0)
    session = session_for(["r0"], ["r0", "r1"])
    async with open_host(ups, policy, retry=RetryPolicy(max_attempts=1)) as host:
        await run(host, TaskRequest(task_id="a", prompt="hi", session_id=session))
        await trio.sleep(5.0)
        trial = await run(host, TaskRequest(task_id="b", prompt="hi", session_id=session))
        after = host.statistics().pools["p"].replicas["r0"]
        again = await run(host, TaskRequest(task_id="c", prompt="hi", session_id=session))
    error = end_of(trial).error
    assert error is not None
    assert error.kind is ErrorKind.INVALID_PARAMS  # the trial: neither success nor failure
    assert after.breaker == "half_open"
    assert isinstance(again[0], Started)
    assert again[0].replica_id == "r0"  # the freed trial is taken again


async def test_policy_default_is_used_when_none_is_given() -> None:
    assert AdapterHost().policy == HostPolicy()


async def test_engine_version_is_probed_again_when_health_changes(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    (up,) = await start_upstreams(nursery, 1, flavor="vllm")
    policy = dataclasses.replace(POLICY, probe_interval=1.0)
    async with open_host([up], policy, retry=RetryPolicy(max_attempts=1)) as host:
        at_bind = probe_paths(up).count("/version")
        await trio.sleep(2.5)  # two rounds, health unchanged
        steady = probe_paths(up).count("/version")
        up.loading = True
        await trio.sleep(1.0)  # not ready: health changed
        up.loading = False
        await trio.sleep(1.0)  # ready again: changed again
        after = probe_paths(up).count("/version")
        assert host.capabilities()["p"].engines == ("vllm 0.11.0",)
    assert at_bind == 1
    assert steady == 1
    assert after == 3


class SlowProbes(FakeUpstream):
    """Answers its probes (GETs) `probe_delay` seconds late."""

    probe_delay = 0.0

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes, *, at: float
    ) -> Plan:
        plan = super().answer(method, path, headers, body, at=at)
        if method != "GET" or not self.probe_delay:
            return plan
        return dataclasses.replace(plan, before=(Sleep(self.probe_delay), *plan.before))


@pytest.mark.parametrize(("delay", "ready"), [(3.0, True), (8.0, False)])
async def test_background_probe_round_is_bounded_by_max_of_connect_and_probe_interval(
    nursery: trio.Nursery, loopback_clock: MockClock, delay: float, ready: bool
) -> None:
    # connect 1 s, probe_interval 4 s: a round may take 4 s. A probe answering in 3 s keeps the
    # replica ready (a round bounded by `connect` alone would not); one answering in 8 s makes it
    # not ready when the round's 4 s are up (an unbounded round would still be waiting).
    up = SlowProbes()
    await nursery.start(up.serve)
    policy = dataclasses.replace(POLICY, probe_interval=4.0)
    timeouts = Timeouts(connect=1.0, first_token=5.0, idle=10.0, total=60.0)
    with trio.fail_after(DEADLINE):
        async with open_host([up], policy, timeouts=timeouts) as host:
            up.probe_delay = delay
            await trio.sleep(8.5)  # the first background round started at 4 s
            assert host.capabilities()["p"].replicas_ready == (1 if ready else 0)
            health = await host.health("p")  # probes now, bounded the same way
    assert health.ready is ready
    if not ready:
        assert "no probe answer within 4 s" in health.detail


async def test_a_probe_round_asks_health_props_and_engine_version_concurrently(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    # Every probe GET answers 1.5 s late (each probe makes one or two GETs) and the first probe
    # may take 4 s (connect): only asked together do health, props and engine_version all come
    # back within it.
    up = SlowProbes()
    up.probe_delay = 1.5
    await nursery.start(up.serve)
    timeouts = Timeouts(connect=4.0, first_token=5.0, idle=10.0, total=60.0)
    with trio.fail_after(DEADLINE):
        async with open_host([up], timeouts=timeouts) as host:
            caps = host.capabilities()["p"]
            up.probe_delay = 0.0
    assert caps.replicas_ready == 1
    assert caps.slots_total == up.slots
    assert caps.engines == ("llama.cpp b1-0c1e570",)

"""The host's narration (HOST.md, "Observability"): one record per step, never per token,
with the standard fields plus actor, action, target, pool_id, replica_id and job_id, at the
levels HOST.md gives."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from loguru import logger
from trio.testing import MockClock

from oai_adapter import HostPolicy, RetryPolicy, TaskRequest
from oai_adapter._log import TASK_FIELDS
from oai_adapter.testing import Fault

from .hostkit import POLICY, config, open_host, run, session_for, start_upstreams

HOST_FIELDS = ("actor", "action", "target", "pool_id", "replica_id", "job_id")


@pytest.fixture
def narration() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    logger.enable("oai_adapter")
    sink = logger.add(
        lambda m: records.append(m.record),
        level="DEBUG",
        filter=lambda r: r["extra"].get("actor") == "adapter-host",
        format="{message}",
    )
    try:
        yield records
    finally:
        logger.remove(sink)
        logger.disable("oai_adapter")


def actions(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["extra"]["action"], r["level"].name) for r in records]


async def test_every_record_carries_the_standard_and_host_fields(
    nursery: trio.Nursery, narration: list[dict[str, Any]]
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(500))
    session = session_for(["r0"], ["r0", "r1"])
    async with open_host(ups) as host:
        await run(host, TaskRequest(task_id="t", prompt="hi", session_id=session))
        await host.unbind("p", "r1")
    assert narration
    for record in narration:
        extra = record["extra"]
        for field in (*TASK_FIELDS, *HOST_FIELDS):
            assert field in extra, f"{field} missing from {record['message']!r}"
        assert extra["actor"] == "adapter-host"
        assert extra["pool_id"] == "p"
        assert extra["target"] == "llama.cpp b1-0c1e570"  # the engine, once known
    route, failover = (
        next(r for r in narration if r["extra"]["action"] == a) for a in ("route", "failover")
    )
    assert route["extra"]["job_id"] == "t"
    assert route["extra"]["session_id"] == session
    assert failover["extra"]["replica_id"] == "r0"
    assert "UPSTREAM_ERROR" in failover["message"]
    assert "to replica r1" in failover["message"]


async def test_actions_and_levels(
    nursery: trio.Nursery, narration: list[dict[str, Any]], loopback_clock: MockClock
) -> None:
    a, b, c = await start_upstreams(nursery, 3)
    a.script(Fault.status(500), Fault.status(500))
    policy = dataclasses.replace(POLICY, breaker_failures=1, breaker_open=1.0, probe_interval=1.0)
    session = session_for(["r0"], ["r0", "r1"])
    async with open_host([a, b], policy, retry=RetryPolicy(max_attempts=1)) as host:
        await run(host, TaskRequest(task_id="t1", prompt="hi", session_id=session))
        await trio.sleep(1.0)
        await run(host, TaskRequest(task_id="t2", prompt="hi", session_id=session))  # trial fails
        await trio.sleep(2.0)
        await run(host, TaskRequest(task_id="t3", prompt="hi", session_id=session))  # closes
        b.loading = True
        await trio.sleep(1.5)  # a probe finds r1 not ready
        async with host.submit("p", TaskRequest(task_id="t4", prompt="hi")) as events:
            host.cancel("p", "t4")
            [ev async for ev in events]
        await host.bind("p", "r0", config(c))
        await host.unbind("p", "r0")
    seen = actions(narration)
    expected = {
        ("bind", "INFO"),
        ("route", "DEBUG"),
        ("failover", "WARNING"),
        ("breaker", "WARNING"),  # opened
        ("breaker", "INFO"),  # half-open, closed
        ("readiness", "INFO"),
        ("cancel", "INFO"),
        ("rebind", "INFO"),
        ("unbind", "INFO"),
    }
    assert expected <= set(seen)
    breaker = [r["message"] for r in narration if r["extra"]["action"] == "breaker"]
    assert [m.split(":")[0] for m in breaker] == [
        "breaker open",
        "breaker half-open",
        "breaker open",
        "breaker half-open",
        "breaker closed",
    ]
    assert seen.count(("unbind", "INFO")) == 3  # rebound r0 drained; unbind r0: start, done
    for record in narration:
        if record["extra"]["action"] == "breaker":
            opened = record["message"].startswith("breaker open")
            assert record["level"].name == ("WARNING" if opened else "INFO")


async def test_retry_budget_refusal_is_narrated(
    nursery: trio.Nursery, narration: list[dict[str, Any]]
) -> None:
    ups = await start_upstreams(nursery, 2)
    ups[0].script(Fault.status(503))
    ups[1].script(Fault.status(500))
    policy = HostPolicy(budget_percent=0.0, budget_min_per_s=0.0, probe_interval=60.0)
    async with open_host(ups, policy) as host:
        session = session_for(["r0"], ["r0", "r1"])
        await run(host, TaskRequest(task_id="a", prompt="hi", session_id=session))
        await run(
            host,
            TaskRequest(task_id="b", prompt="hi", session_id=session_for(["r1"], ["r0", "r1"])),
        )
    refusals = [r for r in narration if r["extra"]["action"] == "retry-budget"]
    assert [r["level"].name for r in refusals] == ["WARNING", "WARNING"]
    assert "refused a retry" in refusals[0]["message"]
    assert "refused a failover" in refusals[1]["message"]
    assert [r["extra"]["job_id"] for r in refusals] == ["a", "b"]


async def test_no_record_per_token(nursery: trio.Nursery, narration: list[dict[str, Any]]) -> None:
    (up,) = await start_upstreams(nursery, 1, tokens=[f" w{i}" for i in range(500)])
    async with open_host([up]) as host:
        narration.clear()
        await run(host, TaskRequest(task_id="t", prompt="hi"))
    assert actions(narration) == [("route", "DEBUG")]


async def test_target_is_openai_http_while_the_engine_is_unknown(
    nursery: trio.Nursery, narration: list[dict[str, Any]]
) -> None:
    (up,) = await start_upstreams(nursery, 1, flavor="openai")
    async with open_host([up]) as host:
        await run(host, TaskRequest(task_id="t", prompt="hi"))
    assert narration
    assert {r["extra"]["target"] for r in narration} == {"openai-http"}

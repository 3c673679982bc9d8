"""OpenTelemetry for a host (`oai_adapter.otel.instrument_host`): counters of failovers,
retry-budget refusals and breaker transitions with their pool, replica and state, and the GenAI
metrics of every adapter the host opens — read back through the SDK's in-memory reader."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from trio.testing import MockClock

from oai_adapter import AdapterConfig, AdapterHost, End, HostPolicy, RetryPolicy, TaskRequest
from oai_adapter.otel import instrument_host, uninstrument_host
from oai_adapter.testing import FakeUpstream, Fault, open_upstream

from .conftest import IO_DEADLINE

POOL = "chat"


class Meters:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def points(self, name: str) -> list[tuple[dict[str, Any], int]]:
        """(attributes, value — a counter's sum, a histogram's count) of each data point."""
        data = self.reader.get_metrics_data()
        out: list[tuple[dict[str, Any], int]] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for p in metric.data.data_points:
                        value = p.count if hasattr(p, "count") else p.value  # type: ignore[union-attr]
                        out.append((dict(p.attributes or {}), int(value)))
        return out


@pytest.fixture
def meters() -> Iterator[Meters]:
    m = Meters()
    yield m
    m.provider.shutdown()


def config(upstream: FakeUpstream) -> AdapterConfig:
    return AdapterConfig(
        base_url=upstream.base_url, model=upstream.model, retry=RetryPolicy(max_attempts=1)
    )


@asynccontextmanager
async def pool_of_two(
    policy: HostPolicy, meters: Meters
) -> AsyncIterator[tuple[AdapterHost, FakeUpstream, FakeUpstream]]:
    """gpu-0 bound before `instrument_host` (an adapter already open), gpu-1 after it."""
    async with open_upstream() as a, open_upstream() as b, AdapterHost(policy) as host:
        host.rng.seed(3)
        await host.bind(POOL, "gpu-0", config(a))
        instrument_host(host, meter_provider=meters.provider)
        await host.bind(POOL, "gpu-1", config(b))
        yield host, a, b


async def run(host: AdapterHost, task_id: str) -> End:
    with trio.fail_after(IO_DEADLINE):
        async with host.submit(POOL, TaskRequest(task_id=task_id, prompt="hi")) as events:
            last = [ev async for ev in events][-1]
    assert isinstance(last, End)
    return last


async def test_failover_and_breaker_transitions_are_counted_by_pool_replica_and_state(
    meters: Meters, loopback_clock: MockClock
) -> None:
    policy = HostPolicy(breaker_failures=1, breaker_open=10.0)
    async with pool_of_two(policy, meters) as (host, a, b):
        a.script(Fault.status(503))
        b.script(Fault.status(503))
        end = await run(host, "t-1")  # the first replica fails it, the second too
        assert end.error is not None
        failed_first = [
            r for r, s in host.statistics().pools[POOL].replicas.items() if s.breaker == "open"
        ]
        assert len(failed_first) == 1  # max_ejected 0.5 of two: only the first one opens
        replica = failed_first[0]
        assert meters.points("oai_adapter.host.failovers") == [
            ({"oai_adapter.pool": POOL, "oai_adapter.replica": replica}, 1)
        ]
        await trio.sleep(10.0)
        assert host.statistics().pools[POOL].replicas[replica].breaker == "half_open"
        transitions = sorted(
            (attrs["oai_adapter.breaker.state"], attrs["oai_adapter.replica"], n)
            for attrs, n in meters.points("oai_adapter.host.breaker.transitions")
        )
        assert transitions == [("half_open", replica, 1), ("open", replica, 1)]
        assert meters.points("oai_adapter.host.retry_budget.refused") == []


async def test_a_failover_the_budget_refuses_is_counted(
    meters: Meters, loopback_clock: MockClock
) -> None:
    policy = HostPolicy(budget_percent=0.0, budget_min_per_s=0.0)
    async with pool_of_two(policy, meters) as (host, a, b):
        a.script(Fault.status(503))
        b.script(Fault.status(503))
        end = await run(host, "t-1")
        assert end.error is not None
        assert host.statistics().pools[POOL].budget_refused == 1
        [(attrs, n)] = meters.points("oai_adapter.host.retry_budget.refused")
        assert n == 1
        assert attrs["oai_adapter.pool"] == POOL
        assert attrs["oai_adapter.replica"] in {"gpu-0", "gpu-1"}
        assert meters.points("oai_adapter.host.failovers") == []


async def test_every_adapter_of_the_host_records_genai_metrics(
    meters: Meters, loopback_clock: MockClock
) -> None:
    async with pool_of_two(HostPolicy(), meters) as (host, _a, _b):
        served = set()
        for i in range(8):
            end = await run(host, f"t-{i}")
            assert end.reason == "stop"
        for replica, stats in host.statistics().pools[POOL].replicas.items():
            if stats.submitted:
                served.add(replica)
        assert served == {"gpu-0", "gpu-1"}  # the one opened before instrument_host included
        durations = meters.points("gen_ai.client.operation.duration")
        assert sum(n for _, n in durations) == 8


async def test_uninstrument_host_stops_the_counters(
    meters: Meters, loopback_clock: MockClock
) -> None:
    async with pool_of_two(HostPolicy(), meters) as (host, a, b):
        uninstrument_host(host)
        a.script(Fault.status(503))
        b.script(Fault.status(503))
        await run(host, "t-1")
        assert host.statistics().pools[POOL].failovers == 1
        assert meters.points("oai_adapter.host.failovers") == []

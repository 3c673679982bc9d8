"""Helpers for the host's tests: pools of real upstreams on loopback and a host over them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from oai_adapter import (
    AdapterConfig,
    AdapterHost,
    End,
    HostPolicy,
    RetryPolicy,
    TaskRequest,
    Timeouts,
)
from oai_adapter._events import Event
from oai_adapter._routing import rendezvous_order
from oai_adapter.testing import FakeUpstream

#: Trio seconds; free under `loopback_clock`.
DEADLINE = 600

#: Quick, small retries so that a failing replica is done with in milliseconds.
RETRY = RetryPolicy(max_attempts=2, base=0.01, cap=0.02)

#: A policy whose budget never refuses and whose probes stay out of the way.
POLICY = HostPolicy(budget_min_per_s=1000.0, probe_interval=60.0, drain_timeout=5.0)


def config(upstream: FakeUpstream, **overrides: Any) -> AdapterConfig:
    values: dict[str, Any] = {
        "base_url": upstream.base_url,
        "model": upstream.model,
        "retry": RETRY,
        "timeouts": Timeouts(connect=5.0, first_token=5.0, idle=5.0, total=60.0),
    }
    values.update(overrides)
    return AdapterConfig(**values)


async def start_upstreams(nursery: trio.Nursery, n: int, **kwargs: Any) -> list[FakeUpstream]:
    out = []
    for _ in range(n):
        upstream = FakeUpstream(**kwargs)
        await nursery.start(upstream.serve)
        out.append(upstream)
    return out


@asynccontextmanager
async def open_host(
    upstreams: Sequence[FakeUpstream],
    policy: HostPolicy = POLICY,
    pool: str = "p",
    seed: int | None = 0,
    **overrides: Any,
) -> AsyncIterator[AdapterHost]:
    """A host with `upstreams` bound as replicas r0, r1, … of `pool`."""
    async with AdapterHost(policy) as host:
        if seed is not None:
            host.rng.seed(seed)
        for i, upstream in enumerate(upstreams):
            await host.bind(pool, f"r{i}", config(upstream, **overrides))
        yield host


def session_for(order: Sequence[str], replicas: Sequence[str]) -> str:
    """A session id whose rendezvous ranking of `replicas` starts with `order`."""
    for i in range(100_000):
        session = f"s{i}"
        ranked = [replicas[j] for j in rendezvous_order(session, replicas)]
        if ranked[: len(order)] == list(order):
            return session
    raise AssertionError(f"no session ranks {order} first")


async def run(host: AdapterHost, req: TaskRequest, pool: str = "p") -> list[Event]:
    with trio.fail_after(DEADLINE):
        async with host.submit(pool, req) as events:
            return [ev async for ev in events]


def end_of(events: Sequence[Event]) -> End:
    end = events[-1]
    assert isinstance(end, End)
    return end


def posts(upstream: FakeUpstream) -> int:
    return len(upstream.completion_requests())

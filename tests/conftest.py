"""Shared fixtures: a real upstream on 127.0.0.1 (port 0) and an adapter pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from oai_adapter import AdapterConfig, OpenAIAdapter, RetryPolicy
from oai_adapter.testing import FakeUpstream

#: Every I/O test runs under this deadline (seconds of trio time).
IO_DEADLINE = 20


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> FakeUpstream:
    server = FakeUpstream()
    await nursery.start(server.serve)
    return server


def make_config(upstream: FakeUpstream, **overrides: object) -> AdapterConfig:
    values: dict[str, object] = {
        "base_url": upstream.base_url,
        "model": upstream.model,
        "retry": RetryPolicy(max_attempts=3, base=0.01, cap=0.05),
    }
    values.update(overrides)
    return AdapterConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def adapter(upstream: FakeUpstream) -> AsyncIterator[OpenAIAdapter]:
    async with OpenAIAdapter(make_config(upstream)) as a:
        yield a

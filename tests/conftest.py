"""Shared fixtures: a real upstream on 127.0.0.1 (port 0) and an adapter pointed at it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trustme
from trio.testing import MockClock

from oai_adapter import AdapterConfig, OpenAIAdapter, RetryPolicy
from oai_adapter.testing import FakeUpstream

from .hostile import hostile as hostile  # the raw-bytes upstream fixture, for every test

#: Every I/O test runs under this deadline (seconds of trio time).
IO_DEADLINE = 20


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> FakeUpstream:
    server = FakeUpstream()
    await nursery.start(server.serve)
    return server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A private CA (trustme): not in the system store, trusted only through `ca_file`."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def tls_upstream(ca: trustme.CA, nursery: trio.Nursery) -> FakeUpstream:
    """A `FakeUpstream` on TLS with a certificate for localhost issued by `ca`."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    server = FakeUpstream(ssl_context=server_ctx)
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


#: Real seconds of idleness before `loopback_clock` jumps.
JUMP_AFTER_IDLE = 0.002


@pytest.fixture
def loopback_clock() -> MockClock:
    """A virtual clock for tests that also use real loopback sockets.

    `autojump_clock` jumps to the next deadline the moment no task can run and the I/O poll
    finds nothing ready. On a loaded machine the kernel may hand loopback packets to ksoftirqd
    instead of delivering them within `send()`, and a clock that jumps then fires a timeout real
    time never would. This one waits for a moment of real idleness first; virtual time still
    moves only by jumps, so "fired at 2.0 s" stays exact.
    """
    return MockClock(autojump_threshold=JUMP_AFTER_IDLE)

"""Opening a connection (`_connect.open_tcp`): an IP address is connected to directly, without
trio's happy eyeballs (a nursery, an attempt task and a cancel per connection: ≈ 120 µs of CPU,
docs/performance.md "Set-up per task"); a name still goes through `trio.open_tcp_stream`; a
failed connect raises `OSError` with the socket closed, and the transports map it as before."""

from __future__ import annotations

import gc
import socket
from typing import Any

import httpx2
import pytest
import trio

from oai_adapter import ErrorKind
from oai_adapter._connect import ip_family, open_tcp
from oai_adapter._errors import error_from_transport
from oai_adapter.testing import FakeUpstream

from .conftest import IO_DEADLINE
from .helpers import make_transport


def test_ip_family_tells_addresses_from_names() -> None:
    assert ip_family("127.0.0.1") == socket.AF_INET
    assert ip_family("10.1.2.3") == socket.AF_INET
    assert ip_family("::1") == socket.AF_INET6
    assert ip_family("fd00::8:1") == socket.AF_INET6
    assert ip_family("localhost") is None
    assert ip_family("api.example.com") is None
    assert ip_family("fe80::1%eth0") is None  # scoped: resolved, to find the scope
    assert ip_family("999.1.1.1") is None
    assert ip_family("") is None


@pytest.fixture
def happy_eyeballs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every call of `trio.open_tcp_stream`, which then connects as usual."""
    calls: list[tuple[str, int]] = []
    real = trio.open_tcp_stream

    async def recording(host: str, port: int, **kw: Any) -> trio.SocketStream:
        calls.append((host, port))
        return await real(host, port, **kw)

    monkeypatch.setattr(trio, "open_tcp_stream", recording)
    return calls


async def test_an_ip_address_is_connected_to_directly_and_a_name_is_resolved(
    nursery: trio.Nursery, happy_eyeballs: list[tuple[str, int]]
) -> None:
    upstream = FakeUpstream()
    await nursery.start(upstream.serve)
    with trio.fail_after(IO_DEADLINE):
        direct = await open_tcp("127.0.0.1", upstream.port)
        async with direct:
            assert direct.socket.getpeername() == ("127.0.0.1", upstream.port)
            assert direct.getsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY)
        assert happy_eyeballs == []
        named = await open_tcp("localhost", upstream.port)  # real time: resolved in a thread
        await named.aclose()
    assert happy_eyeballs == [("localhost", upstream.port)]


async def test_the_h11_transport_connects_to_an_ip_address_without_happy_eyeballs(
    nursery: trio.Nursery, happy_eyeballs: list[tuple[str, int]]
) -> None:
    upstream = FakeUpstream()
    await nursery.start(upstream.serve)
    transport = make_transport(max_connections=4)
    with trio.fail_after(IO_DEADLINE):
        async with httpx2.AsyncClient(transport=transport, trust_env=False) as client:
            response = await client.get(upstream.base_url + "/models")
    assert response.status_code == 200
    assert transport.statistics().connects_total == 1
    assert happy_eyeballs == []


async def test_a_refused_connect_raises_oserror_closes_the_socket_and_maps_as_before() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with trio.fail_after(IO_DEADLINE):
        with pytest.raises(ConnectionRefusedError):
            await open_tcp("127.0.0.1", port)
        gc.collect()  # an unclosed socket would warn here (ResourceWarning is an error)
        transport = make_transport(max_connections=4)
        async with httpx2.AsyncClient(transport=transport, trust_env=False) as client:
            with pytest.raises(httpx2.ConnectError) as caught:
                await client.get(f"http://127.0.0.1:{port}/v1/models")
    error = error_from_transport(caught.value, after_headers=False)
    assert error.kind is ErrorKind.POOL_UNAVAILABLE
    assert transport.statistics().connections == 0

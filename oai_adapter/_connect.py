"""Opening one outgoing TCP connection: an IP address directly, a name through trio.

`trio.open_tcp_stream` is happy eyeballs (RFC 8305) for names: it resolves, then races one
attempt task per address in a nursery and cancels the losers. For an IP address there is one
address and nothing to race, yet the machinery runs all the same — a nursery, an attempt task,
an event, and the cancel that ends the race (a `Cancelled` raised and caught). That is ≈ 120 µs of
CPU per connection, a fifth of a stream's whole set-up: 1,000 streams opened at once against
`127.0.0.1` took 548 µs of CPU each through `open_tcp_stream` and 425 µs connected directly
(`benchmarks/bench_setup.py`, docs/performance.md "Set-up per task"). Inference servers are
mostly reached by IP address (a pod's or a replica's address, loopback), so the address is
connected to directly; a name keeps trio's resolution and happy eyeballs.

The socket made here only ever connects: nothing here binds or listens (OC-ADAPT-OAI-6003,
`tests/test_no_listener.py` reads this module for that). It is closed on every way out but
success (an error, a cancel), like `open_tcp_stream`'s, and the stream has `TCP_NODELAY` set
(`trio.SocketStream` sets it).
"""

from __future__ import annotations

import socket

import trio

__all__ = ["ip_family", "open_tcp"]


def ip_family(host: str) -> socket.AddressFamily | None:
    """The address family of an IP address literal (`AF_INET`, `AF_INET6`); `None` for a name
    (or a scoped IPv6 address, `fe80::1%eth0`, which needs resolving to find its scope)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except (OSError, ValueError):
        return None
    return family


async def open_tcp(host: str, port: int) -> trio.SocketStream:
    """A TCP connection to `host:port`: an IP address connected to directly, a name through
    `trio.open_tcp_stream`. Raises `OSError` when the connection fails."""
    family = ip_family(host)
    if family is None:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)

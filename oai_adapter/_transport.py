"""httpx2's transport with a response stream that closes what it opened.

httpx2 2.16's `AsyncResponseStream.__aiter__` iterates httpcore2's `PoolByteStream` generator
with a bare `async for` and never closes it, so a response that is closed before its body ends
— every cancel, every `[DONE]` read before EOF — leaves that generator for the garbage
collector, which trio reports as a `ResourceWarning` ("Async generator … was garbage collected
before it had been exhausted"). Structured concurrency wants the opposite: what a task opened
is closed by the time the task's block is left.

`ClosingTransport` is the stock `AsyncHTTPTransport` (same pool, TLS, proxy and HTTP/2 code)
whose responses carry `_ResponseStream`: an explicit async iterator over httpcore2's stream
that maps its exceptions as httpx2 does and, on `aclose()`, closes the generator before the
stream. The only private names it touches are `AsyncResponseStream._httpcore_stream`,
`map_httpcore_exceptions` and the transport's pool (`_pool`, read by `pool_statistics`); httpx2
is pinned (< 3, uv.lock), and a test fails if any of them moves.

`CLOSE_GRACE` (1 s) is the one grace of every shielded cleanup in the package — closing a
response, a drain's response, the client, an HTTP/2 connection's GOAWAY flush. A close writes
at most a FIN, a GOAWAY or an RST_STREAM, so it takes microseconds on a live socket; the grace
only bounds a peer that stopped reading. Precedent: trio's own examples give a graceful close
1–5 s (`trio.SSLStream.aclose` docs), Envoy's `drain_timeout` defaults to seconds; one second
keeps `End` after a cancel or a deadline prompt even when the peer is wedged.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Final

import httpx2
from httpx2._transports.default import map_httpcore_exceptions

__all__ = ["CLOSE_GRACE", "ClosingTransport"]

#: Seconds any shielded cleanup may take before it is abandoned (see the header).
CLOSE_GRACE: Final = 1.0


class _ResponseStream(httpx2.AsyncByteStream):
    __slots__ = ("_core", "_iterator")

    def __init__(self, core: AsyncIterable[bytes]) -> None:
        self._core = core
        self._iterator: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._core.__aiter__()
        with map_httpcore_exceptions():
            return await self._iterator.__anext__()

    async def aclose(self) -> None:
        iterator, self._iterator = self._iterator, None
        aclose: Any = getattr(iterator, "aclose", None)
        with map_httpcore_exceptions():
            if aclose is not None:
                await aclose()
            core_aclose: Any = getattr(self._core, "aclose", None)
            if core_aclose is not None:
                await core_aclose()


class ClosingTransport(httpx2.AsyncHTTPTransport):
    """`AsyncHTTPTransport` whose response streams close their generator (see the header)."""

    def pool_statistics(self) -> tuple[int, int]:
        """(connections in the pool, idle ones among them)."""
        connections = list(self._pool.connections)
        return len(connections), sum(1 for c in connections if c.is_idle())

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        core = getattr(response.stream, "_httpcore_stream", None)
        if core is not None:
            response.stream = _ResponseStream(core)
        return response

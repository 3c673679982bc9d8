"""HTTP/2 that cancels properly: an httpx2 transport of our own on `h2` + trio — the pool half.

Why our own (docs/http2.md has the long form): httpcore2's HTTP/2 connection sends no
RST_STREAM when a response is closed early (httpcore #943, won't fix), so the upstream keeps
generating for a caller that has gone and its stream count drifts (#1022). Fixing that inside
httpcore2 means subclassing its pool, connection and HTTP/2 connection and tracking their
internals; a transport that owns the h2 state machine is about as long and answers to nobody.

Two modules, one seam (as httpcore's pool calls `create_connection(origin)` and the connection
never sees the pool): `_h2connection.Connection` is the state machine of one connection — its
reader and writer tasks, streams, flow control, GOAWAY, and RST_STREAM(CANCEL) through one
synchronous `release()`; this module is the `httpx2.AsyncBaseTransport` and the pool — which
connection a request takes (one per origin, multiplexed), connecting, how long a request may
wait for the peer's SETTINGS and a stream slot (`max_concurrent_streams`), and the lifetime of
every connection's tasks.

Invariants:
- Structured concurrency: connection tasks live in the transport's nursery, opened by
  `__aenter__` and closed by `__aexit__` (httpx2's `AsyncClient.__aenter__/__aexit__` call
  them; `OpenAIAdapter` enters its client). No task outlives the transport; a request on a
  transport that was not entered raises `RuntimeError`. A connection's `run()` never raises
  into that nursery (`_h2connection`'s header).
- One usable connection per origin; a second connection to it is opened only under the
  origin's lock, when the first is unusable (GOAWAY, lost, stream ids exhausted). Connections
  draining after a GOAWAY are still counted and closed with the transport.
- Bounded waits: connecting, the peer's SETTINGS (a new connection's first stream waits one
  round trip for them, so we never open more streams than the peer allows) and a stream slot
  all share the request's connect timeout; `aclose` gives the GOAWAYs `CLOSE_GRACE` to flush.
- Every stream this transport starts is released exactly once: by the response body's
  `aclose()`, or here when sending the request or waiting for its head fails or is cancelled.
- Errors surface as httpx2 exceptions, which `_errors.error_from_transport` maps: connect
  failures → `ConnectError`/`ConnectTimeout`; no slot in time → `PoolTimeout`; a stream lost
  before or after its headers → `RemoteProtocolError` / `ReadError` (`_h2connection`).

TLS: ALPN offers `h2` and `http/1.1`; an origin that picks HTTP/1.1 is remembered and served
by the HTTP/1.1 transport given as `http1` (the handshake is repeated once). `http://` origins
are spoken to with prior knowledge (h2c). Proxies are not handled here (see `_http.py`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import httpx2
import trio

from ._connect import open_tcp
from ._h2connection import (
    CONNECTION_WINDOW,
    STREAM_WINDOW,
    Connection,
    Origin,
    ResponseBody,
    Stream,
)
from ._transport import CLOSE_GRACE  # the one grace of shielded cleanups (its precedent there)

__all__ = [
    "ALPN",
    "CLOSE_EXTENSION",
    "CONNECTION_WINDOW",
    "STREAM_WINDOW",
    "H2Statistics",
    "H2Transport",
]

#: The `Response.extensions` key of a response's body, whose synchronous `close_now()` resets
#: the stream (httpx2 wraps `response.stream`, so the extension is how a caller reaches it).
CLOSE_EXTENSION: Final = "oai_adapter.h2_body"

#: What a TLS origin is offered: HTTP/2 first, HTTP/1.1 for a server that does not speak it.
ALPN: Final = ("h2", "http/1.1")

#: Headers that belong to one HTTP/1.1 hop and are forbidden in HTTP/2 (RFC 9113 §8.2.2).
_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"host", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


@dataclass(frozen=True, slots=True)
class H2Statistics:
    """A snapshot of the transport: connections open, streams open on them, and counters."""

    connections: int
    streams_open: int
    streams_total: int
    resets_sent: int
    unread_bytes: int  # received, buffered, not yet read by a response's consumer


class H2Transport(httpx2.AsyncBaseTransport):
    """HTTP/2 to every origin, RST_STREAM(CANCEL) on an early close. See the module header."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        write_timeout: float,
        max_streams: int = 100,
        http1: httpx2.AsyncBaseTransport | None = None,
        connection_window: int = CONNECTION_WINDOW,
    ) -> None:
        ssl_context.set_alpn_protocols(list(ALPN))
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._max_streams = max_streams
        self._connection_window = connection_window
        self._http1 = http1
        self._http1_origins: set[Origin] = set()
        self._connections: dict[Origin, Connection] = {}
        self._all: set[Connection] = set()  # including those draining after a GOAWAY
        self._connecting: dict[Origin, trio.Lock] = {}
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._resets_sent = 0
        self._streams_total = 0

    # --- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._nursery is not None or self._closed:
            raise RuntimeError("an H2Transport can be entered once")
        cm = trio.open_nursery()
        self._nursery = await cm.__aenter__()
        self._nursery_cm = cm
        if self._http1 is not None:
            try:
                await self._http1.__aenter__()
            except BaseException as exc:
                self._nursery.cancel_scope.cancel()
                await cm.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            cm, self._nursery_cm = self._nursery_cm, None
            if cm is not None:
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()
                await cm.__aexit__(exc_type, exc_value, traceback)

    async def aclose(self) -> None:
        """GOAWAY on every connection, a short grace to flush it, then close the sockets."""
        if self._closed:
            return
        self._closed = True
        conns = list(self._all)
        for conn in conns:
            conn.close_soon()
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            for conn in conns:
                await conn.finished.wait()
        for conn in conns:
            conn.scope.cancel()
        if self._http1 is not None:
            with trio.move_on_after(CLOSE_GRACE, shield=True):
                await self._http1.aclose()

    def statistics(self) -> H2Statistics:
        live = [c for c in self._all if not c.closed]
        return H2Statistics(
            connections=len(live),
            streams_open=sum(len(c.streams) for c in live),
            streams_total=self._streams_total + sum(c.streams_total for c in self._all),
            resets_sent=self._resets_sent + sum(c.resets_sent for c in self._all),
            unread_bytes=sum(s.unread for c in live for s in c.streams.values()),
        )

    # --- requests --------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._nursery is None or self._closed:
            raise RuntimeError("use the H2Transport inside `async with` (its client, entered)")
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"scheme {scheme!r} is not supported")
        port = url.port or (443 if scheme == "https" else 80)
        origin: Origin = (scheme, url.host, port)
        if origin in self._http1_origins and self._http1 is not None:
            return await self._http1.handle_async_request(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        connect = timeouts.get("connect") or self._connect_timeout
        deadline = trio.current_time() + connect
        headers = _request_headers(request)
        has_body = request.headers.get("content-length", "0") != "0" or (
            "transfer-encoding" in request.headers
        )
        while True:
            conn = await self._connection(origin, deadline)
            if conn is None:
                assert self._http1 is not None
                return await self._http1.handle_async_request(request)
            stream = await self._open_stream(conn, headers, not has_body, deadline)
            if stream is not None:
                break
        try:
            if has_body:
                assert isinstance(request.stream, httpx2.AsyncByteStream)
                await conn.send_body(stream, request.stream)
            while stream.status is None:
                stream.raise_error()
                await stream.wait(timeouts.get("read"))
        except BaseException:
            conn.release(stream)  # RST_STREAM(CANCEL): cancelled, timed out or failed
            raise
        body = ResponseBody(conn, stream, timeouts.get("read"))
        return httpx2.Response(
            status_code=stream.status,
            headers=stream.headers,
            stream=body,
            extensions={"http_version": b"HTTP/2", "stream_id": stream.id, CLOSE_EXTENSION: body},
        )

    async def _connection(self, origin: Origin, deadline: float) -> Connection | None:
        """The origin's usable connection, connecting when there is none. `None`: the origin
        chose HTTP/1.1 in ALPN."""
        conn = self._connections.get(origin)
        if conn is not None and conn.usable:
            return conn
        lock = self._connecting.setdefault(origin, trio.Lock())
        async with lock:
            conn = self._connections.get(origin)
            if conn is not None and conn.usable:
                return conn
            if origin in self._http1_origins:
                return None
            sock = await self._connect(origin, deadline)
            if sock is None:
                self._http1_origins.add(origin)
                return None
            conn = Connection(
                origin,
                sock,
                max_streams=self._max_streams,
                write_timeout=self._write_timeout,
                connection_window=self._connection_window,
            )
            self._connections[origin] = conn
            self._all.add(conn)
            assert self._nursery is not None
            self._nursery.start_soon(self._run, conn)
            return conn

    async def _open_stream(
        self,
        conn: Connection,
        headers: list[tuple[bytes, bytes]],
        end_stream: bool,
        deadline: float,
    ) -> Stream | None:
        """Wait for the peer's SETTINGS and a stream slot on `conn`, then send the request
        headers. `None`: `conn` takes no new streams (the caller picks another). The wait is
        bounded by `deadline` (the connect timeout): `ConnectTimeout` without SETTINGS,
        `PoolTimeout` without a slot."""
        with trio.move_on_at(deadline):
            await conn.settings_received.wait()
        if not conn.settings_received.is_set():
            raise httpx2.ConnectTimeout("the server sent no HTTP/2 SETTINGS in time")
        while conn.usable and not conn.has_slot:
            if trio.current_time() >= deadline:
                raise httpx2.PoolTimeout(
                    f"no HTTP/2 stream slot within the connect timeout "
                    f"({conn.open_streams} open, the limit is {conn.limit})"
                )
            with trio.move_on_at(deadline):
                await conn.slot_changed()
        if not conn.usable:
            return None
        return conn.start_stream(headers, end_stream)

    async def _run(self, conn: Connection) -> None:
        try:
            await conn.run()
        finally:
            self._all.discard(conn)
            self._resets_sent += conn.resets_sent
            self._streams_total += conn.streams_total
            conn.resets_sent = conn.streams_total = 0
            if self._connections.get(conn.origin) is conn:
                del self._connections[conn.origin]

    async def _connect(self, origin: Origin, deadline: float) -> trio.abc.Stream | None:
        """A TCP (h2c) or TLS (ALPN h2) stream; `None` when TLS negotiated HTTP/1.1. The socket
        is closed on every way out but success (an error, a timeout, a cancel)."""
        scheme, host, port = origin
        sock: trio.abc.Stream | None = None
        result: trio.abc.Stream | None = None
        try:
            with trio.fail_at(deadline):
                sock = await open_tcp(host, port)
                if scheme == "http":
                    result = sock
                    return result
                tls = sock = trio.SSLStream(
                    sock, self._ssl_context, server_hostname=host, https_compatible=True
                )
                await tls.do_handshake()
            if tls.selected_alpn_protocol() == "h2":
                result = tls
                return result
            if self._http1 is None:
                raise httpx2.ConnectError(f"{host}:{port} does not offer HTTP/2 (ALPN)")
            return None
        except trio.TooSlowError:
            raise httpx2.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise httpx2.ConnectError(f"connect to {host}:{port} failed: {exc}") from exc
        finally:
            if sock is not None and result is None:
                await trio.aclose_forcefully(sock)


def _request_headers(request: httpx2.Request) -> list[tuple[bytes, bytes]]:
    url = request.url
    authority = request.headers.get("host") or url.netloc.decode("ascii")
    headers = [
        (b":method", request.method.encode("ascii")),
        (b":authority", authority.encode("ascii")),
        (b":scheme", url.scheme.encode("ascii")),
        (b":path", url.raw_path),
    ]
    for name, value in request.headers.raw:
        lname = name.lower()
        if lname in _HOP_BY_HOP or (lname == b"te" and value.lower() != b"trailers"):
            continue
        headers.append((lname, value))
    return headers

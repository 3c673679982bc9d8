"""HTTP/1.1 for streaming: an httpx2 transport of our own on `h11` + trio, with a small pool.

Why our own (docs/performance.md, "decode-step regime"): when a batching server writes one
token per stream per decode step, every token is its own network read, and the cost of a read
decides how many streams a core carries. Under httpx2's stock transport a read goes through
httpcore2's pool and connection, a timeout scope and exception mapping per read, then httpx2's
`aiter_raw` (chunker, byte counters, generator layers): about 50 µs per read over h11 alone
(FACTS.md). Here a read is `H11Body.receive_some()`: one `receive_some` on the trio stream,
h11's parser, and nothing else. A stream's request goes to `H11Transport.open()` as a
`WireRequest` (method, target, header pairs, body; `_http.Upstream.wire_request` builds it
without httpx2's `Request`), and its head comes back as h11 parsed it: no httpx2 object is
made for a stream (set-up CPU, and what 1,000 streams opened at once hold while they connect,
docs/performance.md). httpx2 reaches the same `open()` through `handle_async_request` (probes,
HTTP/2's fallback), and reads the body through its `__aiter__`.

Used for direct (non-proxied) `http://` and `https://` origins; through a proxy the client
keeps httpx2's own transport (`_http.py`; docs/architecture.md).

The hot path: a response's `extensions[BODY_EXTENSION]` is its `H11Body` (httpx2 wraps
`response.stream` in its own stream, so the extension is how a caller reaches ours).
`await body.receive_some()` returns the body bytes of one network read (several h11 `Data`
events of one read are joined), `b""` at the end; `body.complete` says the response ended
cleanly (so a caller can tell the end before it asks again).

A plain (non-TLS) socket is read straight off its file descriptor: `wait_readable(fd)`, then
`os.read`, with trio's checkpoint rules kept (every socket read is a cancel point and a
schedule point). trio's `SocketStream.receive_some` does the same under three more layers per
call (an error-translating context manager, a try-first `recv` whose `BlockingIOError` is the
usual answer in the decode-step regime, an async context manager around it): ~3 µs of a
~50 µs read. A read tries the socket first only after one that filled the buffer (more is
likely waiting: the bulk case); otherwise it waits for readiness first (a token per step: the
socket would say "not yet"). A TLS stream is read through trio's `SSLStream`.

Invariants:
- A connection goes back to the pool only after a clean end of its exchange: h11 is `DONE` on
  both sides and moves to `IDLE` with `start_next_cycle()`. Every other close — an early
  `aclose()` (a cancel), an error, a cancelled read or write — closes the socket at once
  (`trio.aclose_forcefully`: no TLS close_notify wait), so the upstream sees the disconnect at
  its next write (llama-server frees the slot then, FACTS.md).
- The pool: at most `max_connections` requests in flight (a semaphore, taken before the
  connection and given back when the response is closed, or at once on a failure before it);
  at most `max_keepalive` idle connections kept (`_http.MAX_KEEPALIVE`, its precedent), LIFO,
  each for at most `keepalive_expiry` seconds; an idle connection whose socket is readable
  (the server closed it, or sent bytes nobody asked for) is dropped instead of reused. Total
  connections never exceed `max_connections`: taking a new one when the pool is full of
  other origins' idle connections closes the oldest of those.
- Connection set-up is not serialised: each request that finds no idle connection opens its
  own, concurrently with the others (1,000 streams opened at once connect at once). Connect
  (TCP and the TLS handshake) is bounded by the connect timeout, each request write by the
  write timeout; reads have no timeout of their own unless httpx2 passes one (the adapter
  bounds them with its own deadlines).
- TLS: the context given (`_tls.shared_ssl_context`: verification always on, ALPN
  `http/1.1`; it is shared, so it is not changed here), SNI and the hostname check on the
  URL's host.
- Errors are httpx2's exception types, so `_errors.error_from_transport` maps them as it
  maps httpcore2's: `ConnectError` / `ConnectTimeout` (connect, TLS), `WriteError` /
  `WriteTimeout` (sending the request), `RemoteProtocolError` (closed or malformed before
  or inside the response), `ReadError` (a socket error while reading), `ReadTimeout`.
"""

from __future__ import annotations

import os
import re
import select
import ssl
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Final, Self, cast

import h11
import httpx2
import trio

from ._config import FIELD_NAME
from ._connect import open_tcp

__all__ = [
    "BODY_EXTENSION",
    "READ_SIZE",
    "H11Body",
    "H11Statistics",
    "H11Transport",
    "Origin",
    "WireRequest",
    "origin_of",
]

#: The `Response.extensions` key under which a response carries its `H11Body`.
BODY_EXTENSION: Final = "oai_adapter.h11_body"

#: Bytes asked of the socket per read (as httpcore and h11-based servers do).
READ_SIZE: Final = 64 * 1024
#: Plain sockets are read off their file descriptor (module header) where a socket is one:
#: POSIX. On Windows a socket is not a file descriptor, and trio's stream reads it.
_FD_READS: Final = sys.platform != "win32"

#: (scheme, host, port): what a pooled connection is for.
Origin = tuple[str, str, int]

#: The timeouts of a request that names none: the transport's own (connect, write), no read.
_TRANSPORT_TIMEOUTS: Final[Mapping[str, float | None]] = {}


def origin_of(url: httpx2.URL) -> Origin:
    """The pool's key for `url`; `UnsupportedProtocol` for a scheme other than http(s)."""
    scheme = url.scheme
    if scheme not in ("http", "https"):
        raise httpx2.UnsupportedProtocol(f"scheme {scheme!r} is not supported")
    return (scheme, url.host, url.port or (443 if scheme == "https" else 80))


@dataclass(frozen=True, slots=True)
class H11Statistics:
    """A snapshot of the pool: connections open (idle ones included), idle ones, requests in
    flight, and how many connections were ever opened."""

    connections: int
    idle: int
    in_flight: int
    connects_total: int


class _Connection:
    """One socket and its h11 state machine."""

    __slots__ = ("h11", "idle_since", "origin", "stream")

    def __init__(self, origin: Origin, stream: trio.abc.Stream) -> None:
        self.origin = origin
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def stale(self) -> bool:
        """The socket is readable while idle: the server closed it (EOF) or sent bytes nobody
        asked for. Either way it cannot carry another request."""
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if not isinstance(stream, trio.SocketStream):
            return False  # not a socket (tests may wrap one): trust it
        return _readable(stream)

    def plain_readable(self) -> bool:
        """A plain (non-TLS) socket with bytes (or EOF) waiting: a read returns at once. Over
        TLS a readable socket may hold part of a record, and a read could wait for the rest."""
        stream = self.stream
        return isinstance(stream, trio.SocketStream) and _readable(stream)


class WireRequest:
    """A request as it goes on the wire: its method, target (path and query), headers in the
    order they are sent and the body whole. A request is sent once: `encode()` hands over its
    bytes and drops the headers and body, so a stream waiting for its response head holds
    neither (1,000 streams opened at once all wait there, docs/performance.md, memory), and
    the `Authorization` header lives no longer than the write. Its repr names no header."""

    __slots__ = ("body", "headers", "method", "target")

    def __init__(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.method = method
        self.target = target
        self.headers: list[tuple[bytes, bytes]] | None = headers
        self.body: bytes | None = body

    @classmethod
    def of(cls, request: httpx2.Request, content: bytes) -> WireRequest:
        """An httpx2 request (built by httpx2 or `_http.Upstream`), its body read as `content`."""
        return cls(request.method, request.url.raw_path, list(request.headers.raw), content)

    def add_headers(self, headers: Mapping[str, str]) -> None:
        """Append `headers` (ASCII) after the others, as `httpx2.Headers.update` does."""
        if self.headers is None:
            raise RuntimeError("a WireRequest is sent once")
        self.headers.extend((k.encode("ascii"), v.encode("ascii")) for k, v in headers.items())

    def encode(self, parser: h11.Connection) -> bytes:
        """The request's bytes, and `parser` (h11) moved past the request, ready to read the
        response; once. A request every part of which is plainly valid and framed only by its
        `Content-Length` (`_plain_request`: ours are) is written here, byte for byte as h11
        writes it, and h11 is told only what its response side depends on — the method, and
        that the request was sent whole on a connection kept alive. Anything else goes through
        h11, which validates and frames it (or refuses it): h11's `Request` checks every header
        against its grammar, and its three sends cost ≈ 20 µs of a stream's set-up, the
        largest single item of it (docs/performance.md)."""
        headers, body = self.headers, self.body
        if headers is None or body is None:
            raise RuntimeError("a WireRequest is sent once")
        self.headers = self.body = None
        sent = _SENT_AS.get(self.method)
        if sent is not None:
            out = _plain_request(self.method, self.target, headers, body)
            if out is not None:
                parser.send(sent)
                parser.send(_END)
                return out
        out = parser.send(h11.Request(method=self.method, target=self.target, headers=headers))
        assert out is not None
        if body:
            out += parser.send(h11.Data(data=body)) or b""
        return out + (parser.send(h11.EndOfMessage()) or b"")

    def __repr__(self) -> str:
        path = self.target.split(b"?", 1)[0].decode("ascii", "replace")
        return f"<WireRequest {self.method} {path}>"  # no query, no header


#: What h11 is told a plainly valid request was (`WireRequest.encode`), by method: its
#: response side depends on the method (HEAD, CONNECT), an upgrade asked for, `Expect:
#: 100-continue` and `Connection: close` — a plain request has none of these and is kept
#: alive, so a stand-in with the same method and an empty body moves h11 where the real one
#: would. Events are immutable; one serves every request.
_SENT_AS: Final[Mapping[str, h11.Request]] = {
    method: h11.Request(method=method, target="/", headers=[("Host", "h"), ("Content-Length", "0")])
    for method in ("GET", "POST")
}
_END: Final = h11.EndOfMessage()
#: A header name (RFC 9110 `token`, as h11's: `_config.FIELD_NAME`) and a value with neither
#: leading nor trailing whitespace, of visible ASCII, spaces and tabs: stricter than h11 (no
#: obs-text), so whatever passes is what h11 would send unchanged, and whatever does not is
#: left to h11 to judge.
_NAME: Final = re.compile(FIELD_NAME.encode("ascii"))
_VALUE: Final = re.compile(rb"(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?")
_TARGET: Final = re.compile(rb"[\x21-\x7e]+")
#: Headers that change how h11 frames the request or reads its response: left to h11.
_FRAMING: Final = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"te"})


def _plain_request(
    method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes | None:
    """The request's bytes exactly as h11 writes them (request line, `Host` first, the other
    headers in order, the body), or None when any part of it is one h11 must judge: a name or
    value outside the plain grammar, no `Host` or two, a `Content-Length` other than the
    body's one, a framing header, `Connection` other than `keep-alive`."""
    if _TARGET.fullmatch(target) is None:
        return None
    length = b"%d" % len(body)
    host: bytes | None = None
    lengths = 0
    lines: list[bytes] = [b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), target), b""]
    for name, value in headers:
        if _NAME.fullmatch(name) is None or _VALUE.fullmatch(value) is None:
            return None
        lower = name.lower()
        if lower == b"host":
            if host is not None:
                return None
            host = b"%s: %s\r\n" % (name, value)
            continue
        if lower == b"content-length":
            if value != length:
                return None
            lengths += 1
        elif lower in _FRAMING or (lower == b"connection" and value.lower() != b"keep-alive"):
            return None
        lines.append(b"%s: %s\r\n" % (name, value))
    if host is None or lengths > 1 or (body and not lengths):
        return None
    lines[1] = host
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class H11Body(httpx2.AsyncByteStream):
    """A response read straight off its connection: its head first (`H11Transport.open`), then
    `receive_some()` per network read of the body. It owns the connection and its permit from
    the moment the connection is taken: `aclose()` returns the connection to the pool after a
    clean end, else closes it, and gives the permit back."""

    __slots__ = (
        "_conn",
        "_done",
        "_eager",
        "_head",
        "_need_data",
        "_read_timeout",
        "_sock",
        "_transport",
        "complete",
    )

    def __init__(
        self, transport: H11Transport, conn: _Connection, read_timeout: float | None
    ) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout
        self._done = False  # closed: nothing more to read
        self.complete = False  # the response's end was read (h11 EndOfMessage)
        # The response's head: the first `receive_some()` returns when it is read, and
        # `take_head()` takes it (a running stream does not keep it). False: not yet read.
        self._head: h11.Response | bool = False
        # h11 said NEED_DATA when the last read's bytes were returned: the next call reads the
        # socket first instead of asking h11 again (one `next_event` less per network read).
        self._need_data = False
        # A plain socket, read off its file descriptor (module header); None for TLS (and on
        # Windows, where a socket is no file descriptor). The fd is
        # asked for at every read: once the socket is closed it is -1, never a number that a
        # newer socket may have been given.
        stream = conn.stream
        self._sock = stream.socket if _FD_READS and type(stream) is trio.SocketStream else None
        # The last read filled the buffer: try the socket before waiting. Not for the first
        # read, the head's, which comes right after the request was written.
        self._eager = False

    async def receive_some(self) -> bytes:
        """The body bytes of the next network read; `b""` once the body has ended."""
        conn = self._conn
        if conn is None or self.complete:
            return b""
        parser = conn.h11
        data = b""
        need_data = self._need_data
        self._need_data = False
        try:
            while True:
                if need_data:
                    event: object = h11.NEED_DATA
                    need_data = False
                else:
                    event = parser.next_event()
                if type(event) is h11.Data:
                    data = data + event.data if data else bytes(event.data)
                    continue
                if event is h11.NEED_DATA:
                    if data:
                        self._need_data = True
                        return data
                    if self._read_timeout is not None:  # httpx2 passed one (the adapter: none)
                        parser.receive_data(
                            await _read_within(conn.stream, self._read_timeout, "data")
                        )
                        continue
                    # the hot path, inline: one frame less per open stream and per read
                    try:
                        sock = self._sock
                        if sock is None:
                            chunk = cast(bytes, await conn.stream.receive_some(READ_SIZE))
                        else:
                            fd = sock.fileno()
                            if fd < 0:
                                raise trio.ClosedResourceError("the connection was closed")
                            now = await self._read_now(fd) if self._eager else None
                            while now is None:
                                await trio.lowlevel.wait_readable(fd)  # the checkpoint
                                # Asked again: a `close_now()` (a cancel) may have closed the
                                # socket while this task waited to run, and its number may
                                # belong to a newer socket already.
                                fd = sock.fileno()
                                if fd < 0:
                                    raise trio.ClosedResourceError("the connection was closed")
                                try:
                                    now = os.read(fd, READ_SIZE)
                                except BlockingIOError:  # a spurious wake-up
                                    continue
                            chunk = now
                            self._eager = len(chunk) == READ_SIZE
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise httpx2.ReadError(f"reading the response failed: {exc!r}") from exc
                    parser.receive_data(chunk)
                    continue
                if type(event) is h11.EndOfMessage:
                    self.complete = True
                    return data
                if type(event) is h11.Response:  # before the body: the head (`H11Transport.open`)
                    self._head = event
                    return data
                if type(event) is h11.InformationalResponse:  # 1xx: the final response follows
                    continue
                if type(event) is h11.ConnectionClosed:
                    raise httpx2.RemoteProtocolError(
                        "the server closed the connection"
                        if self._head is not False
                        else "the server disconnected without sending a response"
                    )
                # PAUSED cannot happen while their side sends the body; anything else is a bug
                raise httpx2.RemoteProtocolError(f"unexpected HTTP/1.1 event {event!r}")
        except h11.RemoteProtocolError as exc:
            await self._abort()
            raise httpx2.RemoteProtocolError(str(exc)) from exc
        except BaseException:
            await self._abort()
            raise

    def take_head(self) -> h11.Response:
        """The response head the first `receive_some()` read; once (`H11Transport.open`)."""
        head = self._head
        if not isinstance(head, h11.Response):
            raise RuntimeError("no response head to take")
        self._head = True
        return head

    @staticmethod
    async def _read_now(fd: int) -> bytes | None:
        """Try the socket first, with trio's rules for a read that does not wait: a cancel
        point before it, a schedule point after it. `None` when nothing is there yet."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return None
        await trio.lowlevel.cancel_shielded_checkpoint()
        return chunk

    async def end_if_here(self, limit: int) -> bool:
        """After the server's end marker: parse the body's end if it is already here — in
        h11's buffer, or waiting on a plain socket (a read that returns at once) — dropping at
        most `limit` bytes of body before it. Never waits for the server: False when the end is
        not here yet (or on any error; `aclose()` then closes the connection)."""
        conn = self._conn
        if conn is None or self.complete:
            return self.complete
        parser = conn.h11
        self._need_data = False  # bytes may be added to h11's buffer here: ask it again after
        dropped = 0
        try:
            while True:
                event = parser.next_event()
                if type(event) is h11.Data:
                    dropped += len(event.data)
                    if dropped > limit:
                        return False
                elif type(event) is h11.EndOfMessage:
                    self.complete = True
                    return True
                elif event is h11.NEED_DATA and conn.plain_readable():
                    parser.receive_data(cast(bytes, await conn.stream.receive_some(READ_SIZE)))
                else:
                    return False  # not here yet, or the connection closed
        except (h11.RemoteProtocolError, OSError, trio.BrokenResourceError):
            return False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        data = await self.receive_some()
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        """Give the connection back (clean end) or close its socket (anything else)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        transport = self._transport
        try:
            parser = conn.h11
            if self.complete and parser.our_state is h11.DONE and parser.their_state is h11.DONE:
                parser.start_next_cycle()
                transport._give_back(conn)
            else:
                await transport._discard(conn)
        finally:
            transport._release()

    def close_now(self) -> bool:
        """Close the connection at once, synchronously (a cancel: `TaskState.stop()`), unless
        its exchange ended cleanly and it went back to the pool. True when this body holds no
        connection afterwards; False when its stream is not a socket (tests may wrap one) and
        only an awaited close can end it (`aclose()`). A read waiting on the socket, or about
        to make one, fails afterwards with `ReadError` (or the caller's cancel)."""
        conn = self._conn
        if conn is None:
            return True
        if not self._transport._close_in_use(conn):
            return False
        self._conn = None
        self._transport._release()
        return True

    async def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await self._transport._discard(conn)
            finally:
                self._transport._release()


class H11Transport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 on h11 and trio with a small pool; see the module header."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        write_timeout: float,
        max_connections: int,
        max_keepalive: int,
        keepalive_expiry: float = 30.0,
    ) -> None:
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self._keepalive_expiry = keepalive_expiry
        self._permits = trio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()  # oldest first; reuse takes the newest
        self._open: set[_Connection] = set()
        self._connects_total = 0
        self._closed = False

    def statistics(self) -> H11Statistics:
        return H11Statistics(
            connections=len(self._open),
            idle=len(self._idle),
            in_flight=self._max_connections - self._permits.value,
            connects_total=self._connects_total,
        )

    async def aclose(self) -> None:
        """Close every connection, idle or in use (a response read after this fails). Each
        socket is closed synchronously: a close that runs out of time or is cancelled midway
        (the caller bounds it, `CLOSE_GRACE`) must not leave the rest to the garbage collector
        (`just soak` found that: rebinds under load left dozens of sockets open)."""
        self._closed = True
        conns = list(self._open)
        self._open.clear()
        self._idle.clear()
        others = [conn.stream for conn in conns if not _close_now(conn.stream)]
        for stream in others:  # not sockets (tests may wrap one)
            await trio.aclose_forcefully(stream)

    async def __aenter__(self) -> Self:
        return self

    # --- requests --------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """httpx2's entry (probes, error bodies, HTTP/2's fallback): `open()`, its head as an
        `httpx2.Response` whose stream is the `H11Body` (also in `extensions[BODY_EXTENSION]`)."""
        try:
            content = request.content  # a body given whole (ours always are)
        except httpx2.RequestNotRead:
            content = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        head, body = await self.open(
            origin_of(request.url), WireRequest.of(request, content), timeouts
        )
        return httpx2.Response(
            status_code=head.status_code,
            headers=head.headers.raw_items(),
            stream=body,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": head.reason,
                BODY_EXTENSION: body,
            },
        )

    async def open(
        self,
        origin: Origin,
        wire: WireRequest,
        timeouts: Mapping[str, float | None] = _TRANSPORT_TIMEOUTS,
    ) -> tuple[h11.Response, H11Body]:
        """Send `wire` to `origin` — on an idle connection, or a new one — and read the response
        head: its head, and its body, which owns the connection and its permit.
        `timeouts` as httpx2 passes them (connect, write, read; a missing one is the
        transport's own, read: none). On any failure the connection is closed."""
        if self._closed:
            raise RuntimeError("the H11Transport is closed")
        await self._permits.acquire()
        body: H11Body | None = None
        try:
            conn = self._take_idle(origin)
            # One deadline scope for the connect and the write, its deadline moved between
            # them (a scope is ≈ 5 µs of a stream's set-up, docs/performance.md).
            write_timeout = timeouts.get("write") or self._write_timeout
            connect_timeout = timeouts.get("connect") or self._connect_timeout
            timeout = write_timeout if conn is not None else connect_timeout
            with trio.CancelScope(deadline=trio.current_time() + timeout) as deadline:
                if conn is None:
                    conn = await self._connect(origin)
                    deadline.deadline = trio.current_time() + write_timeout
                body = H11Body(self, conn, timeouts.get("read"))  # owns the permit from here
                try:
                    await conn.stream.send_all(wire.encode(conn.h11))
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise httpx2.WriteError(f"sending the request failed: {exc!r}") from exc
            del wire  # sent: not kept while the head is awaited
            if deadline.cancelled_caught or body is None:
                if body is None:
                    _, host, port = origin
                    raise httpx2.ConnectTimeout(f"connect to {host}:{port} timed out")
                raise httpx2.WriteTimeout(f"the request was not sent within {write_timeout:g} s")
            await body.receive_some()  # returns at the head
            return body.take_head(), body
        except BaseException as exc:
            if body is None:
                self._release()
            else:
                await body._abort()  # closes the connection, gives the permit back
            if isinstance(exc, h11.LocalProtocolError):
                raise httpx2.LocalProtocolError(str(exc)) from exc
            raise

    # --- the pool ---------------------------------------------------------------------------

    def _take_idle(self, origin: Origin) -> _Connection | None:
        """The newest usable idle connection to `origin`; expired or stale ones are closed."""
        idle = self._idle
        if not idle:
            return None
        now = trio.current_time()
        for i in range(len(idle) - 1, -1, -1):
            conn = idle[i]
            if conn.origin != origin:
                continue
            del idle[i]
            if now - conn.idle_since > self._keepalive_expiry or conn.stale():
                self._drop(conn)
                continue
            return conn
        return None

    def _give_back(self, conn: _Connection) -> None:
        """A connection whose exchange ended cleanly: kept idle, or closed past the cap."""
        if self._closed or conn not in self._open:
            self._drop(conn)
            return
        conn.idle_since = trio.current_time()
        self._idle.append(conn)
        while len(self._idle) > self._max_keepalive:
            self._drop(self._idle.popleft())

    async def _discard(self, conn: _Connection) -> None:
        """Close a connection in use (an early close, an error, a cancel) at once. A socket's
        close is synchronous: done here, a cancelled task does not pay the two scheduler
        passes of `aclose_forcefully`'s cancelled checkpoint before its `End` (bench_cancel)."""
        if not self._close_in_use(conn):
            self._open.discard(conn)
            await trio.aclose_forcefully(conn.stream)  # not a socket (tests may wrap one)

    def _close_in_use(self, conn: _Connection) -> bool:
        """Close a connection in use synchronously; False (nothing done) when its stream is
        not a socket (`_discard` then closes it awaited)."""
        if not _close_now(conn.stream):
            return False
        self._open.discard(conn)
        return True

    def _drop(self, conn: _Connection) -> None:
        """Close an idle connection without waiting (nothing is in flight on it)."""
        self._open.discard(conn)
        _close_now(conn.stream)

    def _release(self) -> None:
        self._permits.release()

    async def _connect(self, origin: Origin) -> _Connection:
        """A new connection (TCP, and TLS for `https`); the caller's scope bounds it by the
        connect timeout. The socket is closed on every way out but success (an error, the
        timeout's cancel, any other cancel)."""
        scheme, host, port = origin
        while len(self._open) >= self._max_connections and self._idle:
            self._drop(self._idle.popleft())  # another origin's idle connection makes room
        sock: trio.abc.Stream | None = None
        try:
            sock = await open_tcp(host, port)
            if scheme == "https":
                tls = sock = trio.SSLStream(
                    sock, self._ssl_context, server_hostname=host, https_compatible=True
                )
                await tls.do_handshake()
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            if sock is not None:
                await trio.aclose_forcefully(sock)
            raise httpx2.ConnectError(f"connect to {host}:{port} failed: {exc}") from exc
        except BaseException:
            if sock is not None:
                await trio.aclose_forcefully(sock)
            raise
        conn = _Connection(origin, sock)
        self._open.add(conn)
        self._connects_total += 1
        return conn


async def _read_within(stream: trio.abc.Stream, seconds: float | None, what: str) -> bytes:
    """One read of `stream`, bounded by `seconds` (httpx2's read timeout; None: unbounded here,
    the caller's deadlines bound it), its failures as httpx2's exceptions. `what` names what
    was awaited."""
    try:
        if seconds is None:
            return cast(bytes, await stream.receive_some(READ_SIZE))
        with trio.fail_after(seconds):
            # trio may hand back a bytearray; h11 takes either (its buffer is a bytearray)
            return cast(bytes, await stream.receive_some(READ_SIZE))
    except trio.TooSlowError:
        raise httpx2.ReadTimeout(f"no {what} from the server within {seconds:g} s") from None
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise httpx2.ReadError(f"reading the response failed: {exc!r}") from exc


def _readable(stream: trio.SocketStream) -> bool:
    """Bytes (or EOF, or an error) wait on the socket: a read would return at once."""
    try:
        readable, _, _ = select.select([stream.socket.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _close_now(stream: trio.abc.Stream) -> bool:
    """Close a stream's socket synchronously, without a TLS goodbye (an idle connection owes
    none; one closed early or on an error gets none, as `aclose_forcefully` does). False when
    the stream is not a socket (or TLS over one)."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
        return True
    return False

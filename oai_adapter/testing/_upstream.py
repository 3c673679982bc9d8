"""The test upstream over HTTP/1.1 (trio + h11): a real server on loopback that plays the
responder's plans.

It is a real server on a real socket (127.0.0.1, port 0 unless told), started with
`nursery.start(upstream.serve)` or `async with open_upstream() as upstream`. What it answers —
chat, completions and responses streams, the probes real engines have, scripted replies and
faults — is decided by the sans-IO `Responder` it is (`_responder.py`); this module only plays a
`Plan` on an HTTP/1.1 connection, and `H2Upstream` plays the same plans over HTTP/2.

It records what it saw: every request (headers and JSON body), the connections open, and each
client that went away in the middle of a response (`disconnects`, `disconnected`), which is how
tests prove that a cancel closed the upstream response.

The steps on this wire: `Send` is one write (a chunk of the chunked body; before the status line,
raw bytes); `Reset` and `ResetStream` abort the connection with a TCP RST (HTTP/1.1 cannot reset
one response); `GoAway` closes the connection once the response is done; `UpdateSettings` means
nothing here. The response ends with the chunked body's terminator after the last step.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, TypeVar

import h11
import trio

from ._responder import Plan, Responder
from ._script import GoAway, Step, UpdateSettings
from ._wire import play

__all__ = ["MAX_BODY", "FakeUpstream", "abort", "open_upstream", "serving"]

#: The largest request body read (a request is a prompt: 1 MiB is far beyond any test's).
MAX_BODY = 1 << 20


class FakeUpstream(Responder):
    """A scripted OpenAI-compatible server over HTTP/1.1. See the module header; the options
    besides the socket's are the `Responder`'s (text, tokens, model, pace, api_key, flavor,
    slots, n_ctx, missing)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **responder: Any,
    ) -> None:
        super().__init__(**responder)
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self._quiet = trio.lowlevel.ParkingLot()  # unparked whenever a connection/stream ends
        self.connections_open = 0
        self.connections_total = 0
        self.disconnects = 0
        self.disconnected = trio.Event()

    # --- set-up --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = "localhost" if self.ssl_context is not None else self.host
        return f"{scheme}://{host}:{self.port}/v1"

    async def wait_quiet(self, connections: int = 0) -> None:
        """Wait until no stream and at most `connections` connections are open."""
        while self.streams_open > 0 or self.connections_open > connections:
            await self._quiet.park()

    async def serve(
        self, *, task_status: trio.TaskStatus[FakeUpstream] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self)
            await trio.serve_listeners(self._handle_quietly, listeners, handler_nursery=nursery)

    # --- what both wires share -------------------------------------------------------------

    @contextmanager
    def _playing(self, plan: Plan) -> Iterator[None]:
        """While `plan` is played: counted in `streams_open` if it answers a completion."""
        if plan.completion:
            self.streams_open += 1
        try:
            yield
        finally:
            if plan.completion:
                self.streams_open -= 1
            self._quiet.unpark_all()

    def _client_gone(self) -> None:
        """The client went away in the middle of a response."""
        self.disconnects += 1
        self.disconnected.set()

    # --- connections ---------------------------------------------------------------------

    async def _handle_quietly(self, stream: trio.abc.Stream) -> None:
        try:
            await self._handle(stream)
        finally:
            self._quiet.unpark_all()  # a connection ended: wake `wait_quiet`

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections_open += 1
        self.connections_total += 1
        sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        try:
            if self.ssl_context is not None:
                stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
                await stream.do_handshake()
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
            while True:
                plan = await self._read_request(conn, stream)
                if plan is None:
                    return
                with self._playing(plan):
                    keep = await self._play_plan(conn, stream, sock, plan)
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            h11.ProtocolError,
            ssl.SSLError,
        ):
            return
        finally:
            await trio.aclose_forcefully(stream)
            self.connections_open -= 1

    async def _read_request(self, conn: h11.Connection, stream: trio.abc.Stream) -> Plan | None:
        """The next request, answered by the responder; `None` when the client is done."""
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data and conn.their_state is h11.IDLE:
                    return None
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.ProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return self.answer(
                    head.method.decode(),
                    head.target.decode(),
                    {k.decode().lower(): v.decode() for k, v in head.headers},
                    bytes(body),
                    at=trio.current_time(),
                )
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    # --- one response --------------------------------------------------------------------

    async def _play_plan(
        self, conn: h11.Connection, stream: trio.abc.Stream, sock: Any, plan: Plan
    ) -> bool:
        """Play `plan` on this connection. True: the connection can serve the next request."""
        if plan.before and not await self._play(conn, stream, sock, plan.before, raw=True):
            return False
        head = h11.Response(status_code=plan.status, headers=list(plan.headers))
        await stream.send_all(conn.send(head) or b"")
        return await self._play(conn, stream, sock, plan.steps)

    async def _play(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        sock: Any,
        steps: Sequence[Step],
        *,
        raw: bool = False,
    ) -> bool:
        """Send the steps while watching for the client going away. True: keep the connection.
        `raw`: before the status line — bytes go out as they are and the response is not ended."""
        gone = False
        wire = _H11Wire(conn, stream, sock, raw=raw)
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    # Bytes that arrive meanwhile are the client's next request on this
                    # connection (a pooled connection is reused at once): keep them for h11.
                    nonlocal gone
                    while True:
                        try:
                            data = await stream.receive_some(65536)
                        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
                            data = b""
                        if not data:
                            gone = True
                            nursery.cancel_scope.cancel()
                            return
                        conn.receive_data(bytes(data))

                nursery.start_soon(watch)
                try:
                    if not await play(steps, wire):
                        return False
                    if not raw:
                        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    gone = True
                nursery.cancel_scope.cancel()
        finally:
            if gone:
                self._client_gone()
        return wire.keep and not gone


class _H11Wire:
    """One response on an HTTP/1.1 connection (a `Wire`, see `_wire.py`)."""

    def __init__(
        self, conn: h11.Connection, stream: trio.abc.Stream, sock: Any, *, raw: bool
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.sock = sock
        self.raw = raw
        self.keep = True  # the connection may serve the next request

    async def send(self, data: bytes, *, last: bool) -> None:
        """One write: a chunk of the chunked body, or raw bytes before the status line."""
        await self.stream.send_all(data if self.raw else self.conn.send(h11.Data(data=data)) or b"")

    def reset_connection(self) -> None:
        abort(self.sock)

    def reset_stream(self, error_code: int) -> None:
        abort(self.sock)  # HTTP/1.1 cannot reset one response: the connection goes

    def go_away(self, step: GoAway) -> None:
        self.keep = False  # close once this response is done

    def update_settings(self, step: UpdateSettings) -> None:
        """HTTP/1.1 has no settings."""


def abort(sock: Any) -> None:
    """Close with RST: linger on, timeout 0."""
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass


_Server = TypeVar("_Server", bound=FakeUpstream)


@asynccontextmanager
async def serving(upstream: _Server) -> AsyncIterator[_Server]:
    """`upstream` serving for the duration of the block (its own nursery, cancelled on exit)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        try:
            yield upstream
        finally:
            nursery.cancel_scope.cancel()


def open_upstream(**kwargs: Any) -> AbstractAsyncContextManager[FakeUpstream]:
    """A `FakeUpstream` serving for the duration of the block."""
    return serving(FakeUpstream(**kwargs))

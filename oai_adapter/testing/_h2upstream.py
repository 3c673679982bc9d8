"""The test upstream over HTTP/2 (trio + h2, cleartext with prior knowledge — h2c — or TLS with
ALPN `h2`): it plays the same responder's plans as `FakeUpstream`, on HTTP/2 streams.

What it answers is decided by the `Responder` (it is a `FakeUpstream`; only the wire differs).
It adds what HTTP/2 tests need: a record of the frames the client sent that matter (`frames`:
RST_STREAM with its stream id and error code, GOAWAY), a configurable `max_concurrent_streams`,
the peak of streams open at once, and `stream_ids` (each request's `x-correlation-id` → its
stream id).

The steps on this wire: `Send` is one DATA frame (split only by flow control) and the last step's
carries END_STREAM, so a client that stops at `[DONE]` has seen the end and has nothing to reset;
before the status line, `Send` and a `Hang`'s drip are raw bytes on the connection. `Reset` drops
the whole connection (TCP RST), as it does over HTTP/1.1: the client sees the connection lost,
before or after the headers as the plan says. `ResetStream` resets this stream only
(RST_STREAM; before the headers, a refused stream). `GoAway` sends GOAWAY, refuses new streams,
finishes the streams it covers, then closes. `UpdateSettings` sends a SETTINGS frame.

Like the client transport, each connection has one writer task, the only one that writes to
the socket; the players (one task per stream) change the h2 state and wake it, so a player
cancelled by the client's RST_STREAM never leaves half a frame behind. A client reset cancels
that stream's player at once: the upstream stops generating, as llama-server does.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
from hyperframe.frame import GoAwayFrame

from ._responder import Plan
from ._script import GoAway, UpdateSettings
from ._upstream import MAX_BODY, FakeUpstream, abort, serving
from ._wire import play

__all__ = ["H2Upstream", "RecordedFrame", "open_h2_upstream"]


@dataclass(frozen=True)
class RecordedFrame:
    """A frame the client sent: `kind` is `"RST_STREAM"` or `"GOAWAY"`; `connection` numbers
    the connection from 1."""

    connection: int
    kind: Literal["RST_STREAM", "GOAWAY"]
    stream_id: int
    error_code: int


@contextmanager
def _ending(nursery: trio.Nursery) -> Iterator[None]:
    """The connection ends when its reader or writer does, however it does."""
    try:
        yield
    except (
        trio.BrokenResourceError,
        trio.ClosedResourceError,
        h2.exceptions.ProtocolError,
        ssl.SSLError,
        OSError,
    ):
        pass
    finally:
        nursery.cancel_scope.cancel()


class _Conn:
    """One server connection: h2 state, one writer, one player task per stream."""

    def __init__(self, number: int, stream: trio.abc.Stream, max_streams: int) -> None:
        self.number = number
        self.sock = stream
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams},
        )
        self.h2.initiate_connection()
        self.raw: list[bytes] = []  # frames we write ourselves, after h2's (GOAWAY mid-stream)
        self.scopes: dict[int, trio.CancelScope] = {}
        self.requests: dict[int, tuple[list[tuple[bytes, bytes]], bytearray]] = {}
        self.goaway_last: int | None = None
        self.open = 0
        self.peak = 0
        self._writer_waiter: trio.Event | None = None
        self._window_waiters: list[trio.Event] = []
        self.done = trio.Event()
        self.reset_sock: Any = None

    def wake(self) -> None:
        if self._writer_waiter is not None:
            self._writer_waiter.set()
            self._writer_waiter = None

    def window_changed(self) -> None:
        waiters, self._window_waiters = self._window_waiters, []
        for event in waiters:
            event.set()

    async def wait_window(self) -> None:
        event = trio.Event()
        self._window_waiters.append(event)
        await event.wait()

    def update_settings(self, step: UpdateSettings) -> None:
        codes = h2.settings.SettingCodes
        new = {
            codes.MAX_CONCURRENT_STREAMS: step.max_concurrent_streams,
            codes.INITIAL_WINDOW_SIZE: step.initial_window_size,
        }
        self.h2.update_settings({k: v for k, v in new.items() if v is not None})
        self.wake()

    def go_away(self, step: GoAway, sid: int) -> None:
        """GOAWAY (written after what h2 has queued); the streams above its last id are not
        processed: their players are cancelled."""
        last_id = sid if step.last_stream_id is None else step.last_stream_id
        frame = GoAwayFrame(0, last_stream_id=last_id, error_code=step.error_code)
        self.raw.append(frame.serialize())
        self.goaway_last = last_id
        for other, scope in list(self.scopes.items()):
            if other > last_id:
                scope.cancel()
        self.wake()

    def finish(self, *, reset: Any = None) -> None:
        """Close the connection once what is queued has been written; with `reset` (the TCP
        socket), close it with a TCP RST then."""
        self.reset_sock = reset
        self.done.set()
        self.wake()

    async def writer(self) -> None:
        while True:
            data = self.h2.data_to_send()
            if self.raw:
                data += b"".join(self.raw)
                self.raw.clear()
            if data:
                await self.sock.send_all(data)
            elif self.done.is_set():
                if self.reset_sock is not None:
                    abort(self.reset_sock)
                return
            else:
                event = self._writer_waiter = trio.Event()
                await event.wait()


class H2Upstream(FakeUpstream):
    """A scripted OpenAI-compatible server over HTTP/2. See the module header."""

    def __init__(self, *, max_concurrent_streams: int = 100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.ssl_context is not None:
            self.ssl_context.set_alpn_protocols(["h2"])
        self.max_concurrent_streams = max_concurrent_streams
        self.frames: list[RecordedFrame] = []
        self.frame_seen = trio.Event()  # set (and replaced) at each recorded frame
        self.peak_streams = 0  # most streams open at once on one connection
        self.streams_total = 0
        self.stream_ids: dict[str, int] = {}  # x-correlation-id → stream id
        self._stream_seen = trio.Event()

    async def wait_streams(self, count: int) -> None:
        """Until `count` requests have been received in all (`streams_total`)."""
        while self.streams_total < count:
            await self._stream_seen.wait()

    def resets(self) -> list[tuple[int, int]]:
        """`(stream_id, error_code)` of every RST_STREAM the client sent, in order."""
        return [(f.stream_id, f.error_code) for f in self.frames if f.kind == "RST_STREAM"]

    async def wait_frames(self, count: int) -> None:
        """Until at least `count` frames have been recorded."""
        while len(self.frames) < count:
            await self.frame_seen.wait()

    def _record(
        self, conn: _Conn, kind: Literal["RST_STREAM", "GOAWAY"], sid: int, code: Any
    ) -> None:
        self.frames.append(RecordedFrame(conn.number, kind, sid, int(code or 0)))
        self.frame_seen.set()
        self.frame_seen = trio.Event()

    # --- connections ---------------------------------------------------------------------

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections_open += 1
        self.connections_total += 1
        sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        conn: _Conn | None = None
        try:
            if self.ssl_context is not None:
                stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
                await stream.do_handshake()
            conn = _Conn(self.connections_total, stream, self.max_concurrent_streams)
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    with _ending(nursery):
                        await self._read(conn, nursery, sock)

                async def write() -> None:
                    with _ending(nursery):
                        await conn.writer()

                nursery.start_soon(read)
                nursery.start_soon(write)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            return
        finally:
            self.connections_open -= 1
            if conn is not None:
                for scope in conn.scopes.values():
                    scope.cancel()
            await trio.aclose_forcefully(stream)

    async def _read(self, conn: _Conn, nursery: trio.Nursery, sock: Any) -> None:
        while True:
            data = await conn.sock.receive_some(65536)
            if not data:
                return
            for event in conn.h2.receive_data(data):
                self._on_event(conn, nursery, sock, event)
            conn.wake()

    def _on_event(self, conn: _Conn, nursery: trio.Nursery, sock: Any, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            conn.requests[event.stream_id] = (list(event.headers), bytearray())
        elif isinstance(event, h2.events.DataReceived):
            entry = conn.requests.get(event.stream_id)
            if entry is not None:
                entry[1].extend(event.data)
                if len(entry[1]) > MAX_BODY:
                    raise h2.exceptions.ProtocolError("request body too large")
            conn.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            entry = conn.requests.pop(event.stream_id, None)
            if entry is not None and (
                conn.goaway_last is None or event.stream_id <= conn.goaway_last
            ):
                new_scope = conn.scopes[event.stream_id] = trio.CancelScope()
                nursery.start_soon(self._stream, conn, sock, event.stream_id, entry, new_scope)
        elif isinstance(event, h2.events.StreamReset):
            self._record(conn, "RST_STREAM", event.stream_id, event.error_code)
            scope = conn.scopes.get(event.stream_id)
            if scope is not None:
                self.disconnects += 1
                self.disconnected.set()
                scope.cancel()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._record(conn, "GOAWAY", event.last_stream_id or 0, event.error_code)
            conn.finish()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            conn.window_changed()

    # --- one stream ------------------------------------------------------------------------

    async def _stream(
        self,
        conn: _Conn,
        sock: Any,
        sid: int,
        entry: tuple[list[tuple[bytes, bytes]], bytearray],
        scope: trio.CancelScope,
    ) -> None:
        raw_headers, body = entry
        headers = {k.decode().lower(): v.decode() for k, v in raw_headers}
        method = headers.pop(":method", "GET")
        path = headers.pop(":path", "/")
        headers = {k: v for k, v in headers.items() if not k.startswith(":")}
        plan = self.answer(method, path, headers, bytes(body), at=trio.current_time())
        self.stream_ids[headers.get("x-correlation-id", "")] = sid
        self.streams_total += 1
        self._stream_seen.set()
        self._stream_seen = trio.Event()
        conn.open += 1
        conn.peak = max(conn.peak, conn.open)
        self.peak_streams = max(self.peak_streams, conn.peak)
        try:
            with self._playing(plan), scope:
                await self._play_on_stream(conn, sock, sid, plan)
        except (h2.exceptions.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            conn.open -= 1
            conn.scopes.pop(sid, None)
            if conn.goaway_last is not None and not conn.scopes:
                conn.finish()  # every stream the GOAWAY covered is done: close

    async def _play_on_stream(self, conn: _Conn, sock: Any, sid: int, plan: Plan) -> None:
        if not await play(plan.before, _H2Wire(conn, sid, sock, raw=True)):
            return
        headers = [(":status", str(plan.status)), *plan.headers]
        conn.h2.send_headers(
            sid, [(k.encode(), v.encode()) for k, v in headers], end_stream=not plan.steps
        )
        conn.wake()
        wire = _H2Wire(conn, sid, sock, raw=False)
        if plan.steps and await play(plan.steps, wire) and not wire.ended:
            conn.h2.end_stream(sid)
            conn.wake()


class _H2Wire:
    """One response on an HTTP/2 stream (a `Wire`, see `_wire.py`); `raw`: before its
    headers, where bytes go onto the connection as they are."""

    def __init__(self, conn: _Conn, sid: int, sock: Any, *, raw: bool) -> None:
        self.conn = conn
        self.sid = sid
        self.sock = sock
        self.raw = raw
        self.ended = False  # END_STREAM sent

    async def send(self, data: bytes, *, last: bool) -> None:
        """DATA frames (as flow control allows); the last step's carries END_STREAM."""
        conn = self.conn
        if self.raw:
            conn.raw.append(data)
            conn.wake()
            return
        end_stream = self.ended = last
        while data:
            window = min(
                conn.h2.local_flow_control_window(self.sid), conn.h2.max_outbound_frame_size
            )
            if window <= 0:
                await conn.wait_window()
                continue
            piece, data = data[:window], data[window:]
            conn.h2.send_data(self.sid, piece, end_stream=end_stream and not data)
            conn.wake()
        await trio.lowlevel.checkpoint()

    def reset_connection(self) -> None:
        self.conn.finish(reset=self.sock)  # what was sent goes first, as over HTTP/1.1

    def reset_stream(self, error_code: int) -> None:
        self.conn.h2.reset_stream(self.sid, error_code)
        self.conn.wake()

    def go_away(self, step: GoAway) -> None:
        self.conn.go_away(step, self.sid)

    def update_settings(self, step: UpdateSettings) -> None:
        self.conn.update_settings(step)


def open_h2_upstream(**kwargs: Any) -> AbstractAsyncContextManager[H2Upstream]:
    """An `H2Upstream` serving for the duration of the block."""
    return serving(H2Upstream(**kwargs))

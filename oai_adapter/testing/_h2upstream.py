"""The test upstream over HTTP/2: the same scripted chat/completions streams as `FakeUpstream`,
spoken with `h2` over cleartext (prior knowledge, h2c) or TLS with ALPN `h2`.

It serves the same replies and probes (it is a `FakeUpstream`; only the connection handling
differs) and adds what HTTP/2 tests need: a record of the frames the client sent that matter
(`frames`: RST_STREAM with its stream id and error code, GOAWAY), a configurable
`max_concurrent_streams`, and more steps for a reply — `GoAway` (GOAWAY mid-stream, then
finish the streams it covers and close), `ResetStream` (RST_STREAM on this stream; as the first
step, before the headers), `UpdateSettings` (a SETTINGS frame mid-connection) and `Gate` (wait
for a trio Event, to hold streams open together). A last `Send` carries END_STREAM on its
DATA frame, so a client that stops at `[DONE]` has seen the end and has nothing to reset.
`stream_ids` maps each request's `x-correlation-id` to its stream id.

Like the client transport, each connection has one writer task, the only one that writes to
the socket; the responders (one task per stream) change the h2 state and wake it, so a responder
cancelled by the client's RST_STREAM never leaves half a frame behind. A client reset cancels
that stream's responder at once: the upstream stops generating, as llama-server does.
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
import msgspec
import trio
from hyperframe.frame import GoAwayFrame

from ._script import Hang, RecordedRequest, Reply, Reset, Send, Sleep
from ._upstream import MAX_BODY, FakeUpstream, abort, serving

__all__ = [
    "Gate",
    "GoAway",
    "H2Upstream",
    "RecordedFrame",
    "ResetStream",
    "UpdateSettings",
    "open_h2_upstream",
]

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class GoAway:
    """Send GOAWAY naming `last_stream_id` (default: this stream) and `error_code`; refuse new
    streams; finish the streams at or below it, then close the connection."""

    last_stream_id: int | None = None
    error_code: int = 0


@dataclass(frozen=True)
class ResetStream:
    """Reset this stream (RST_STREAM) with `error_code`, default INTERNAL_ERROR."""

    error_code: int = h2.errors.ErrorCodes.INTERNAL_ERROR


@dataclass(frozen=True)
class UpdateSettings:
    """Send a SETTINGS frame mid-connection (`None`: leave that setting as it is)."""

    max_concurrent_streams: int | None = None
    initial_window_size: int | None = None

    def apply(self, conn: _Conn) -> None:
        codes = h2.settings.SettingCodes
        new = {
            codes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
            codes.INITIAL_WINDOW_SIZE: self.initial_window_size,
        }
        conn.h2.update_settings({k: v for k, v in new.items() if v is not None})
        conn.wake()


@dataclass(frozen=True)
class Gate:
    """Wait until `event` is set (tests use it to hold streams open together)."""

    event: trio.Event


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
    """One server connection: h2 state, one writer, one responder task per stream."""

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

    def finish(self) -> None:
        """Close the connection once what is queued has been written."""
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
        req = RecordedRequest.received(
            headers.pop(":method", "GET"),
            headers.pop(":path", "/"),
            {k: v for k, v in headers.items() if not k.startswith(":")},
            bytes(body),
            at=trio.current_time(),
        )
        self.requests.append(req)
        self.stream_ids[req.headers.get("x-correlation-id", "")] = sid
        self.streams_total += 1
        self._stream_seen.set()
        self._stream_seen = trio.Event()
        conn.open += 1
        conn.peak = max(conn.peak, conn.open)
        self.peak_streams = max(self.peak_streams, conn.peak)
        try:
            with scope:
                await self._answer(conn, sock, sid, req)
        except (h2.exceptions.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            conn.open -= 1
            conn.scopes.pop(sid, None)
            if conn.goaway_last is not None and not conn.scopes:
                conn.finish()  # every stream the GOAWAY covered is done: close

    async def _answer(self, conn: _Conn, sock: Any, sid: int, req: RecordedRequest) -> None:
        path = req.path.split("?", 1)[0]
        if not (req.method == "POST" and path in ("/v1/chat/completions", "/v1/completions")):
            status, body = self._probe(req, path)
            await self._plain(conn, sid, status, body)
            return
        reply = self.replies.popleft() if self.replies else Reply()
        if reply.delay:
            await trio.sleep(reply.delay)
        ok, token = self._authorized(req)
        if not ok:
            await self._plain(conn, sid, 401, self._unauthorized(token))
            return
        if self.loading:
            body = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
            await self._plain(conn, sid, 503, body)
            return
        if reply.steps is not None and not reply.steps and (reply.status >= 300 or reply.body):
            await self._plain(
                conn, sid, reply.status, reply.body, reply.headers, reply.content_type
            )
            return
        steps: list[Any] = (
            list(reply.steps) if reply.steps is not None else self._default_steps(req, path)
        )
        while steps and isinstance(steps[0], ResetStream | UpdateSettings):
            step = steps.pop(0)  # before the headers: a refused stream, or new settings
            if isinstance(step, UpdateSettings):
                step.apply(conn)
            else:
                conn.h2.reset_stream(sid, step.error_code)
                conn.wake()
                return
        hdrs = [
            (":status", str(reply.status)),
            ("content-type", reply.content_type or "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-request-id", f"req-{len(self.requests)}"),
            ("server", "fake-upstream-h2"),
            *reply.headers,
        ]
        conn.h2.send_headers(sid, [(k.encode(), v.encode()) for k, v in hdrs])
        conn.wake()
        self.streams_open += 1
        try:
            for i, step in enumerate(steps):
                if isinstance(step, Send):
                    last = i == len(steps) - 1
                    await self._data(conn, sid, step.data, end_stream=last)
                    if last:
                        return
                elif isinstance(step, Gate):
                    await step.event.wait()
                elif isinstance(step, Sleep):
                    await trio.sleep(step.seconds)
                elif isinstance(step, Reset):
                    abort(sock)
                    conn.finish()
                    return
                elif isinstance(step, Hang):
                    await trio.sleep_forever()
                elif isinstance(step, GoAway):
                    last_id = sid if step.last_stream_id is None else step.last_stream_id
                    frame = GoAwayFrame(0, last_stream_id=last_id, error_code=step.error_code)
                    conn.raw.append(frame.serialize())
                    conn.goaway_last = last_id
                    for other, other_scope in list(conn.scopes.items()):
                        if other > last_id:
                            other_scope.cancel()  # not processed, as the GOAWAY says
                    conn.wake()
                elif isinstance(step, UpdateSettings):
                    step.apply(conn)
                elif isinstance(step, ResetStream):
                    conn.h2.reset_stream(sid, step.error_code)
                    conn.wake()
                    return
            conn.h2.end_stream(sid)
            conn.wake()
        finally:
            self.streams_open -= 1

    async def _data(self, conn: _Conn, sid: int, data: bytes, *, end_stream: bool = False) -> None:
        while data:
            window = min(conn.h2.local_flow_control_window(sid), conn.h2.max_outbound_frame_size)
            if window <= 0:
                await conn.wait_window()
                continue
            piece, data = data[:window], data[window:]
            conn.h2.send_data(sid, piece, end_stream=end_stream and not data)
            conn.wake()
        await trio.lowlevel.checkpoint()

    async def _plain(
        self,
        conn: _Conn,
        sid: int,
        status: int,
        body: Any,
        headers: Any = (),
        content_type: str | None = None,
    ) -> None:
        raw = body if isinstance(body, bytes) else _json.encode(body)
        if content_type is None:
            content_type = "application/json" if raw[:1] in (b"{", b"[") else "text/plain"
        hdrs = [
            (":status", str(status)),
            ("content-type", content_type),
            ("content-length", str(len(raw))),
            ("server", "fake-upstream-h2"),
            *headers,
        ]
        conn.h2.send_headers(sid, [(k.encode(), v.encode()) for k, v in hdrs], end_stream=not raw)
        conn.wake()
        if raw:
            await self._data(conn, sid, raw)
            conn.h2.end_stream(sid)
            conn.wake()


def open_h2_upstream(**kwargs: Any) -> AbstractAsyncContextManager[H2Upstream]:
    """An `H2Upstream` serving for the duration of the block."""
    return serving(H2Upstream(**kwargs))

"""One HTTP/2 client connection: the h2 state machine, its reader and writer tasks, its streams.

The connection half of our HTTP/2 transport (the pool half, `_h2transport.H2Transport`, decides
which connection a request takes and how long it may wait for one; docs/http2.md has the why).
A `Connection` never sees the pool: it is given a connected socket and run in the pool's nursery.

Shape. Two tasks — a reader (socket → `h2.receive_data` → per-stream buffers) and a writer (the
only task that calls `send_all`, flushing whatever the h2 state machine has queued). Requests
never touch the socket: they change the h2 state (send headers, data, RST_STREAM, WINDOW_UPDATE)
synchronously and wake the writer. So a cancel — `response.aclose()`, a cancelled read, a
timeout, even from an already-cancelled context — queues RST_STREAM(CANCEL) without awaiting,
and the writer sends it at its next scheduling; no half-written frame can be left behind by a
cancelled request, and the connection stays good for the other streams.

Invariants:
- `run()` never raises: every failure (socket error, h2 protocol error, a bug) is caught at the
  connection's edge, becomes the connection's `error` and ends its streams with an httpx2
  exception — it never cancels the pool's nursery or the code inside the caller's `async with`.
- Every stream is closed exactly once: by END_STREAM both ways, by a peer RST_STREAM, by the
  connection's end, or by `release()` — the one synchronous release — which sends
  RST_STREAM(CANCEL) when the stream is still open at the h2 level and returns to the connection
  window the bytes it dropped unread (h2 itself returns the window for DATA that arrives after
  the reset). A slot frees when h2 counts the stream closed, and one waiter is woken per freed
  slot (`slot_changed`, passed on by `start_stream`), so slots never drift.
- Bounded: a stream buffers at most its receive window (`STREAM_WINDOW`) because the window is
  returned only as the reader consumes; the connection window is large (`CONNECTION_WINDOW`)
  so one slow consumer cannot stall the others. Each write is bounded by the write timeout.
- Errors are httpx2 exceptions, which `_errors.error_from_transport` maps: a stream lost before
  its headers (connection lost, peer RST_STREAM, not processed before a GOAWAY) →
  `RemoteProtocolError` (retried as POOL_UNAVAILABLE); lost after them → `ReadError`
  (WORKER_RESET); no data within the read timeout → `ReadTimeout`.
- GOAWAY: no new streams on this connection; streams above `last_stream_id` fail as "not
  processed" (safe to retry); the others finish. h2 4.x treats a received GOAWAY as the end of
  the connection and refuses the frames that follow, so `_H2Client` puts its state machine back
  to open as it reads the GOAWAY (the one place we reach inside h2; h2 is pinned `<5` and
  `tests/test_http2.py`'s GOAWAY test guards it).
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import AsyncIterable
from typing import Any, Final, Self

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httpx2
import trio
from hyperframe.frame import Frame, GoAwayFrame

__all__ = ["CONNECTION_WINDOW", "STREAM_WINDOW", "Connection", "Origin", "ResponseBody", "Stream"]

#: Receive window per stream: what one stream may buffer unread. 256 KiB holds ~1,000 SSE
#: token events, enough to keep a fast upstream streaming while the consumer catches up.
STREAM_WINDOW: Final = 256 * 1024

#: Receive window of the connection: large, so that streams whose consumers are slow (each
#: holding up to `STREAM_WINDOW`) do not stall the others (head-of-line blocking).
CONNECTION_WINDOW: Final = 64 * 1024 * 1024

#: Bytes asked of the socket per read (as httpcore and h11-based servers do).
READ_SIZE: Final = 64 * 1024

#: A connection's origin: scheme, host, port.
Origin = tuple[str, str, int]


class _H2Client(h2.connection.H2Connection):
    """h2's connection, but a received GOAWAY does not end it (module header, "GOAWAY").

    h2 4.x moves to CLOSED on GOAWAY and then rejects every frame, even in the same read, and it
    drops what is queued to send (a RST_STREAM, a WINDOW_UPDATE). Both overrides are tiny; h2 is
    pinned `<5` and `test_goaway_mid_stream_*` fails if they stop working.
    """

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        frames, events = super()._receive_goaway_frame(frame)
        self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return frames, events

    def clear_outbound_data_buffer(self) -> None:
        """Keep what is queued: h2 calls this only on a received GOAWAY."""


class Stream:
    """One request/response exchange: its response head, unread data and fate."""

    __slots__ = (
        "chunks",
        "ended",
        "error",
        "headers",
        "id",
        "released",
        "status",
        "unread",
        "waiter",
    )

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.unread = 0  # flow-controlled bytes buffered but not yet consumed (padding included)
        self.ended = False  # END_STREAM received
        self.error: tuple[type[httpx2.TransportError], str] | None = None
        self.released = False
        self.waiter: trio.Event | None = None

    def wake(self) -> None:
        if self.waiter is not None:
            self.waiter.set()
            self.waiter = None

    def fail(
        self, before: type[httpx2.TransportError], after: type[httpx2.TransportError], message: str
    ) -> None:
        if self.error is None and not self.ended:
            self.error = (before if self.status is None else after, message)
        self.wake()

    async def wait(self, read_timeout: float | None) -> None:
        """Until something happens to the stream (head, data, end, error), at most
        `read_timeout` seconds (`ReadTimeout`)."""
        event = self.waiter = trio.Event()
        if read_timeout is None:
            await event.wait()
            return
        with trio.move_on_after(read_timeout) as scope:
            await event.wait()
        if scope.cancelled_caught:
            raise httpx2.ReadTimeout(f"no data from the server for {read_timeout:g} s")

    def raise_error(self) -> None:
        if self.error is not None:
            cls, message = self.error
            raise cls(message)


class Connection:
    """One HTTP/2 connection: the h2 state machine, its streams, its reader and writer."""

    def __init__(
        self,
        origin: Origin,
        stream: trio.abc.Stream,
        *,
        max_streams: int,
        write_timeout: float,
        connection_window: int = CONNECTION_WINDOW,
    ) -> None:
        self.origin = origin
        self.sock = stream
        self.max_streams = max_streams
        self.write_timeout = write_timeout
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = _H2Client(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                # streams the server may open to us: none in practice (push is off); 100 is
                # the floor RFC 9113 §6.5.2 recommends advertising
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                # a response head: 4x h11's 16 KiB default cap on an HTTP/1.1 head
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
            },
        )
        self.h2.initiate_connection()
        if connection_window > 65535:
            self.h2.increment_flow_control_window(connection_window - 65535)
        self.streams: dict[int, Stream] = {}
        self.scope = trio.CancelScope()
        self.settings_received = trio.Event()
        self.finished = trio.Event()  # the reader and writer have stopped, the socket is closed
        self.closed = False  # no more reads or writes: the streams have been failed
        self.goaway = False  # no new streams (GOAWAY received or sent, ids exhausted)
        self.closing = False  # our GOAWAY is queued: stop once it is flushed
        self.error: str | None = None
        self.resets_sent = 0
        self.streams_total = 0
        self._slots = trio.lowlevel.ParkingLot()
        self._window = trio.lowlevel.ParkingLot()
        self._writer_waiter: trio.Event | None = None

    # --- lifetime -------------------------------------------------------------------------

    async def run(self) -> None:
        """Reader and writer, until the connection ends. Never raises (see module header)."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._read_loop)
                    nursery.start_soon(self._guard, self._write_loop)
        finally:
            self._lost(self.error or "connection closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.sock)
            self.finished.set()

    async def _guard(self, loop: Any) -> None:
        try:
            await loop()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
            self._stop(f"connection lost ({type(exc).__name__}: {exc})")
        except trio.TooSlowError:
            self._stop("write timed out")
        except h2.exceptions.ProtocolError as exc:
            self._stop(f"HTTP/2 protocol error ({type(exc).__name__}: {exc})")
        except Exception as exc:  # the firewall: a bug here must not cancel the caller's block
            self._stop(f"HTTP/2 connection failed ({type(exc).__name__}: {exc})")

    def _stop(self, message: str) -> None:
        if self.error is None:
            self.error = message
        self.scope.cancel()

    def close_soon(self) -> None:
        """Send GOAWAY(NO_ERROR) and close once it is flushed (or at once if nothing is open)."""
        if self.closed or self.closing:
            return
        self.goaway = self.closing = True
        try:
            self.h2.close_connection()
        except h2.exceptions.ProtocolError:
            self._stop("connection closed")
        self._wake_writer()

    def _lost(self, message: str) -> None:
        """The connection is over: fail every stream, wake every waiter."""
        self.closed = True
        self.goaway = True
        for stream in self.streams.values():
            stream.fail(httpx2.RemoteProtocolError, httpx2.ReadError, message)
        self._slots.unpark_all()
        self._window.unpark_all()

    @property
    def usable(self) -> bool:
        return not self.closed and not self.goaway

    @property
    def open_streams(self) -> int:
        return self.h2.open_outbound_streams

    # --- the two tasks -------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            data = await self.sock.receive_some(READ_SIZE)
            if not data:
                self._stop("the server closed the connection")
                return
            for event in self.h2.receive_data(data):
                self._dispatch(event)
            self._wake_writer()

    async def _write_loop(self) -> None:
        while True:
            data = self.h2.data_to_send()
            if data:
                with trio.fail_after(self.write_timeout):
                    await self.sock.send_all(data)
            elif self.closing:
                self._stop("connection closed")
                return
            else:
                await self._writer_idle()

    async def _writer_idle(self) -> None:
        event = self._writer_waiter = trio.Event()
        await event.wait()

    def _wake_writer(self) -> None:
        if self._writer_waiter is not None:
            self._writer_waiter.set()
            self._writer_waiter = None

    # --- frames from the peer ------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            assert event.data is not None
            stream = self.streams.get(event.stream_id)
            flow = event.flow_controlled_length or 0
            if stream is None or stream.released:
                self._ack(event.stream_id, flow)
                return
            stream.chunks.append(event.data)
            stream.unread += flow
            stream.wake()
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                for name, value in event.headers or ():
                    assert isinstance(name, bytes)
                    assert isinstance(value, bytes)
                    if name == b":status":
                        stream.status = int(value)
                    elif not name.startswith(b":"):
                        stream.headers.append((name, value))
                stream.wake()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.ended = True
                stream.wake()
            self._slot_freed()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None and event.remote_reset:
                code = _code_name(event.error_code)
                stream.fail(
                    httpx2.RemoteProtocolError,
                    httpx2.ReadError,
                    f"the server reset the stream ({code})",
                )
            self._slot_freed()
            self._window.unpark_all()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received.set()
            self._slots.unpark_all()
            self._window.unpark_all()
        elif isinstance(event, h2.events.WindowUpdated):
            self._window.unpark_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)
        # Pings and settings are acknowledged by h2 itself; trailers, informational responses,
        # priority and unknown frames change nothing here.

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.goaway = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = _code_name(event.error_code)
        for stream in self.streams.values():
            if stream.id > last:
                stream.fail(
                    httpx2.RemoteProtocolError,
                    httpx2.ReadError,
                    f"the server sent GOAWAY ({code}) before processing the stream",
                )
        if not any(s.id <= last and not s.ended and s.error is None for s in self.streams.values()):
            self._stop(f"the server sent GOAWAY ({code})")
        self._slots.unpark_all()

    def _slot_freed(self) -> None:
        self._slots.unpark()

    # --- requests --------------------------------------------------------------------------

    @property
    def has_slot(self) -> bool:
        """A new stream may be opened now: usable, and under both sides' stream limits."""
        return self.usable and self.open_streams < self.limit

    @property
    def limit(self) -> int:
        """Streams open at once: the lower of our limit and the peer's `max_concurrent_streams`."""
        return min(self.max_streams, self.h2.remote_settings.max_concurrent_streams)

    async def slot_changed(self) -> None:
        """Until a stream slot may have freed, or the connection became unusable. A woken
        waiter that finds no slot parks again; one that finds one and goes passes the wake-up
        on (`start_stream`), so freed slots are never lost."""
        await self._slots.park()

    def start_stream(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> Stream | None:
        """Send the request headers on a new stream (the caller has seen `has_slot`). `None`:
        this connection takes no new streams (stream ids exhausted: it closes)."""
        try:
            stream_id = self.h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.close_soon()
            return None
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:  # e.g. a header h2 refuses to send
            raise httpx2.LocalProtocolError(f"HTTP/2 request refused: {exc}") from exc
        stream = self.streams[stream_id] = Stream(stream_id)
        self.streams_total += 1
        self._wake_writer()
        if self.has_slot:
            self._slots.unpark()  # pass the wake-up on (a woken waiter may have gone)
        return stream

    async def send_body(self, stream: Stream, chunks: AsyncIterable[bytes]) -> None:
        """Send the request body under flow control, then END_STREAM."""
        async for chunk in chunks:
            view = memoryview(chunk)
            while view:
                stream.raise_error()
                if self.closed:
                    raise httpx2.WriteError(self.error or "connection closed")
                window = min(
                    self.h2.local_flow_control_window(stream.id), self.h2.max_outbound_frame_size
                )
                if window <= 0:
                    await self._window.park()
                    continue
                try:
                    self.h2.send_data(stream.id, bytes(view[:window]))
                except h2.exceptions.ProtocolError as exc:
                    raise httpx2.WriteError(f"HTTP/2 request body not sent: {exc}") from exc
                view = view[window:]
                self._wake_writer()
        stream.raise_error()
        try:
            self.h2.end_stream(stream.id)
        except h2.exceptions.ProtocolError as exc:
            raise httpx2.WriteError(f"HTTP/2 request not ended: {exc}") from exc
        self._wake_writer()

    def consume(self, stream: Stream) -> bytes:
        """Everything buffered for `stream`, its window handed back to the peer."""
        data = stream.chunks.popleft() if len(stream.chunks) == 1 else b"".join(stream.chunks)
        stream.chunks.clear()
        unread, stream.unread = stream.unread, 0
        self._ack(stream.id, unread)
        return data

    def _ack(self, stream_id: int, size: int) -> None:
        """Hand `size` consumed (or dropped) bytes back to the peer's windows: the stream's
        while it is open, the connection's always."""
        if size and not self.closed:
            try:
                self.h2.acknowledge_received_data(size, stream_id)
            except h2.exceptions.ProtocolError:
                return  # the connection is closing: no window to return
            self._wake_writer()

    def release(self, stream: Stream) -> None:
        """The response is closed: reset the stream if still open and forget it. Synchronous,
        so it works from a cancelled context (module header)."""
        if stream.released:
            return
        stream.released = True
        self.streams.pop(stream.id, None)
        if self.closed:
            return
        h2_stream = self.h2.streams.get(stream.id)
        if h2_stream is not None and not h2_stream.closed:
            try:
                self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
                self.resets_sent += 1
            except h2.exceptions.ProtocolError:
                pass  # closed meanwhile: nothing to reset
            self._slot_freed()
        dropped, stream.unread = stream.unread, 0
        stream.chunks.clear()
        self._ack(stream.id, dropped)  # the stream is closed: the connection's share
        self._wake_writer()
        if self.goaway and not self.streams:
            self.close_soon()


def _code_name(code: object) -> str:
    if isinstance(code, h2.errors.ErrorCodes):
        return code.name
    return f"error code {code}"


class ResponseBody(httpx2.AsyncByteStream):
    """The response body: reads a stream's buffer; `aclose()` releases (resets) the stream."""

    def __init__(self, conn: Connection, stream: Stream, read_timeout: float | None) -> None:
        self._conn = conn
        self._stream = stream
        self._read_timeout = read_timeout

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        stream = self._stream
        while True:
            if stream.chunks:
                return self._conn.consume(stream)
            stream.raise_error()
            if stream.ended or stream.released:
                raise StopAsyncIteration
            await stream.wait(self._read_timeout)

    def close_now(self) -> bool:
        """Release the stream now, synchronously (a cancel: `TaskState.stop()`): its
        RST_STREAM(CANCEL) is queued and the writer woken, as `aclose()` does. True: nothing
        of the stream is held afterwards."""
        self._conn.release(self._stream)
        return True

    async def aclose(self) -> None:
        self._conn.release(self._stream)

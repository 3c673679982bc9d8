"""A hostile upstream: a raw TCP server on 127.0.0.1 that plays scripted bytes, nothing more.

`oai_adapter.testing.FakeUpstream` is a well-behaved HTTP server whose faults are scripted on
top of a correct response. Some cases need an upstream that is not an HTTP server at all — a
status line we would never write, a header value no framework lets through, a body of nested
brackets, a close in the middle of a head — so this one speaks only bytes. Each accepted
connection plays the next script (the last one repeats); a script is a list of actions:

    Read()           wait for one whole request (head, then a `Content-Length` body)
    Write(b"...")    send these bytes (one socket write)
    Wait(event)      pause until `event` is set (a `trio.Event` the test controls)
    Close()          close the connection (FIN)
    Reset()          abort it (TCP RST: SO_LINGER 0, then close)
    Hold()           keep it open, reading and dropping, until the client goes away

A script that runs out of actions closes the connection. The common case is one line:
`hostile.play(sse_response(b'data: {"choices": ...}\\n\\n'))` — read the request, write the
response, close. Use it with `make_config(hostile)` (it has `base_url` and `model`) and, since it
runs real sockets, the `loopback_clock` fixture and a `trio.fail_after` deadline.

What each connection received is kept in `requests` (the raw bytes of each request read), so a
test can check what the adapter sent. Reads are capped (`MAX_REQUEST`) so a runaway client cannot
grow the test's memory.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
import trio

__all__ = [
    "Close",
    "Hold",
    "HostileUpstream",
    "Read",
    "Reset",
    "Wait",
    "Write",
    "hostile",
    "http_response",
    "json_response",
    "sse_response",
]

#: The most bytes one request may carry before the server gives up on it (a test's requests
#: are a few KiB; this only bounds a misbehaving client).
MAX_REQUEST = 1 << 20


@dataclass(frozen=True)
class Read:
    """Wait for one whole request: the head up to its blank line, then `Content-Length` bytes."""


@dataclass(frozen=True)
class Write:
    """Send these bytes in one write."""

    data: bytes


@dataclass(frozen=True)
class Wait:
    """Pause until the test sets `event`."""

    event: trio.Event


@dataclass(frozen=True)
class Close:
    """Close the connection (an orderly FIN)."""


@dataclass(frozen=True)
class Reset:
    """Abort the connection: the peer sees a TCP RST, not a FIN."""


@dataclass(frozen=True)
class Hold:
    """Keep the connection open, reading and dropping what comes, until the client closes it."""


Action = Read | Write | Wait | Close | Reset | Hold


def http_response(
    status: int = 200,
    body: bytes = b"",
    *,
    headers: Iterable[tuple[str, str] | tuple[bytes, bytes]] = (),
    reason: bytes = b"X",
    length: bool = True,
) -> bytes:
    """An HTTP/1.1 response, byte for byte as given: headers are written unchecked (bytes pass
    as they are). `length=False` leaves out `Content-Length`, so the body ends at the close."""
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    for name, value in headers:
        n = name if isinstance(name, bytes) else name.encode("latin-1")
        v = value if isinstance(value, bytes) else value.encode("latin-1")
        lines.append(n + b": " + v)
    if length:
        lines.append(b"content-length: %d" % len(body))
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def sse_response(
    *frames: bytes, status: int = 200, headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    """A close-delimited `text/event-stream` response whose body is `frames` joined."""
    return http_response(
        status,
        b"".join(frames),
        headers=[("content-type", "text/event-stream"), *headers],
        length=False,
    )


def json_response(status: int, body: bytes, *, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A complete `application/json` response with this (raw, unchecked) body."""
    return http_response(status, body, headers=[("content-type", "application/json"), *headers])


class HostileUpstream:
    """See the module header. Start it with `await nursery.start(server.serve)`."""

    def __init__(self, *, model: str = "test-model") -> None:
        self.model = model
        self.port = 0
        self.requests: list[bytes] = []  # every request read, in order
        self.connections = 0  # connections accepted
        self._scripts: list[list[Action]] = [[Read(), Close()]]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *scripts: Sequence[Action]) -> None:
        """The scripts of the next connections, one each; the last one repeats."""
        if not scripts:
            raise ValueError("give at least one script")
        self._scripts = [list(s) for s in scripts]

    def play(self, *responses: bytes) -> None:
        """Each next connection reads a request, writes its response, and closes."""
        self.script(*([Read(), Write(r), Close()] for r in responses))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def _next_script(self) -> list[Action]:
        self.connections += 1
        if len(self._scripts) > 1:
            return self._scripts.pop(0)
        return self._scripts[0]

    async def _handle(self, stream: trio.SocketStream) -> None:
        script = self._next_script()
        buffer = bytearray()
        try:
            for action in script:
                if isinstance(action, Read):
                    if not await self._read_request(stream, buffer):
                        return
                elif isinstance(action, Write):
                    await stream.send_all(action.data)
                elif isinstance(action, Wait):
                    await action.event.wait()
                elif isinstance(action, Close):
                    return
                elif isinstance(action, Reset):
                    stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    return
                else:
                    while await stream.receive_some(65536):
                        pass
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away: what a hostile script often provokes
        finally:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _read_request(self, stream: trio.SocketStream, buffer: bytearray) -> bool:
        """Read one request into `requests`; False when the client closed first."""
        while b"\r\n\r\n" not in buffer:
            if not await self._receive(stream, buffer):
                return False
        head_end = buffer.index(b"\r\n\r\n") + 4
        length = 0
        for line in bytes(buffer[:head_end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(buffer) < head_end + length:
            if not await self._receive(stream, buffer):
                return False
        self.requests.append(bytes(buffer[: head_end + length]))
        del buffer[: head_end + length]
        return True

    @staticmethod
    async def _receive(stream: trio.SocketStream, buffer: bytearray) -> bool:
        data = await stream.receive_some(65536)
        if not data:
            return False
        buffer += data
        if len(buffer) > MAX_REQUEST:
            raise AssertionError(f"a request of more than {MAX_REQUEST} bytes")
        return True


@pytest.fixture
async def hostile(nursery: trio.Nursery) -> HostileUpstream:
    """A `HostileUpstream` serving for the test (by default: read a request, then close)."""
    server = HostileUpstream()
    await nursery.start(server.serve)
    return server

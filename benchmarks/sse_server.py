"""The benchmarks' upstream: a minimal HTTP/1.1 server that writes pre-rendered SSE bodies.

It runs in its own process (`python benchmarks/sse_server.py`, the port is printed on stdout)
so that it never shares a core's event loop with the client being measured. It does no JSON
work per request beyond reading `max_tokens`: each body (an OpenAI-shaped chat stream of N word
tokens: role delta, N content deltas, finish, usage, `[DONE]`) is rendered once and cached, and
a request is answered by one `transport.write` of the prepared bytes — which is why it is not
the bottleneck (`bench_upstream.py` checks that with a raw-socket client, and against nginx).

Paths (the adapter's `base_url` picks the mode, the SDK's `base_url` likewise):
  /v1/chat/completions         the whole body at once (Content-Length, keep-alive)
  /hold/v1/chat/completions    the head, the role delta and the first token, then nothing
                               until the client closes (RSS with every stream open)
  /bulk/v1/chat/completions    the whole body at once, and the close time is recorded
  /drip/v1/chat/completions    one event per millisecond (`pace_ms` in the JSON body overrides)
                               until the client closes; the close time is recorded
  /paced/v1/chat/completions   decode steps, as batching servers (vLLM, SGLang, llama.cpp) emit
                               them: every `pace_ms` (default 25) one ticker writes one token event
                               to every open paced stream, each its own write and its own chunk of
                               a chunked body; the token's text is the server's `time.monotonic()`
                               at that write ("%.6f"), so a client measures delivery latency on the
                               same clock. After `max_tokens` tokens: finish, usage, `[DONE]`.
  GET /stats                   JSON: {"closes": {correlation_id: monotonic seconds}, ...}
Times are `time.monotonic()`, the system-wide CLOCK_MONOTONIC, so another process can compare.
`--cpu N` pins the server to CPU N (the benchmarks pin their clients to another one).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from typing import Any

import msgspec

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from oai_adapter.testing._script import chat_chunk, sse  # noqa: E402

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing "
    "matches and every token arrives in order through one bounded channel"
).split()

_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"x-request-id: req-bench\r\n"
    b"server: bench-sse\r\n"
    b"content-length: %d\r\n\r\n"
)


_HEAD_CHUNKED = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"x-request-id: req-bench\r\n"
    b"server: bench-sse\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_ROLE_EVENT = sse(chat_chunk("", role=True, model="bench-model"))
_TS_MARK = "@ts@"
_TOKEN_HEAD, _TOKEN_TAIL = sse(chat_chunk(_TS_MARK, model="bench-model")).split(_TS_MARK.encode())
#: The last write of a paced stream: finish, usage, `[DONE]` and the chunked terminator.
_PACED_END = (
    _chunk(
        sse(chat_chunk(None, finish="stop", model="bench-model"))
        + sse(chat_chunk(model="bench-model", usage=(8, 1), empty_choices=True))
        + b"data: [DONE]\n\n"
    )
    + b"0\r\n\r\n"
)


def paced_token(now: float) -> bytes:
    """One decode step's write to one stream: a chunk holding one token event whose text is
    `now` (the server's monotonic clock)."""
    return _chunk(_TOKEN_HEAD + b"%.6f" % now + _TOKEN_TAIL)


class Pacer:
    """One ticker per step: every `step` seconds, one token write to each of its streams."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.streams: dict[Conn, None] = {}  # in arrival order
        self.running = False
        self.next_at = 0.0

    def add(self, conn: Conn) -> None:
        self.streams[conn] = None
        if not self.running:
            self.running = True
            loop = asyncio.get_running_loop()
            self.next_at = loop.time() + self.step
            loop.call_at(self.next_at, self.tick)

    def tick(self) -> None:
        monotonic = time.monotonic
        for conn in list(self.streams):
            if conn.closed:
                del self.streams[conn]
                continue
            conn.transport.write(paced_token(monotonic()))
            conn.remaining -= 1
            if conn.remaining <= 0:
                conn.transport.write(_PACED_END)
                del self.streams[conn]
        if not self.streams:
            self.running = False
            return
        loop = asyncio.get_running_loop()
        # The next step on the fixed grid; a server that fell behind does not burst to catch up.
        self.next_at = max(self.next_at + self.step, loop.time())
        loop.call_at(self.next_at, self.tick)


class Request(msgspec.Struct):
    """What the server reads from a request's JSON body."""

    max_tokens: int | None = None
    pace_ms: float | None = None

    @property
    def tokens(self) -> int:
        return self.max_tokens or 16

    def pace(self, default_ms: float) -> float:
        """Seconds between two token events: `pace_ms`, else `default_ms`."""
        return (self.pace_ms if self.pace_ms is not None else default_ms) / 1000.0


_req_decoder = msgspec.json.Decoder(Request)


def decode_request(body: bytes) -> Request:
    return _req_decoder.decode(body) if body else Request()


def split_request(buf: bytes) -> tuple[str, str, dict[str, str], bytes, bytes] | None:
    """The request at the front of `buf` — (method, path, headers with lower-case names, body,
    the bytes after it) — or None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    method, path, _ = head[0].split(" ", 2)
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    stop = end + 4 + int(headers.get("content-length", "0"))
    if len(buf) < stop:
        return None
    return method, path, headers, buf[end + 4 : stop], buf[stop:]


def stream_head(length: int) -> bytes:
    """The head of an SSE response whose body is `length` bytes (Content-Length, keep-alive)."""
    return _HEAD % length


def json_response(payload: bytes, status: bytes = b"200 OK") -> bytes:
    """A whole JSON response: the head and `payload`."""
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(payload) + payload
    )


def token_texts(n: int) -> list[str]:
    return [" " + WORDS[i % len(WORDS)] for i in range(n)]


def render_events(n: int, model: str = "bench-model") -> list[bytes]:
    """The SSE events of an n-token chat stream, each one `data:` frame."""
    events = [sse(chat_chunk("", role=True, model=model))]
    events += [sse(chat_chunk(t, model=model)) for t in token_texts(n)]
    events.append(sse(chat_chunk(None, finish="stop", model=model)))
    events.append(sse(chat_chunk(model=model, usage=(8, n), empty_choices=True)))
    events.append(b"data: [DONE]\n\n")
    return events


def render_body(n: int) -> bytes:
    return b"".join(render_events(n))


class Server:
    def __init__(self) -> None:
        self.bodies: dict[int, bytes] = {}
        self.pacers: dict[float, Pacer] = {}
        self.events: dict[int, list[bytes]] = {}
        self.closes: dict[str, float] = {}
        self.requests = 0

    def body(self, n: int) -> bytes:
        b = self.bodies.get(n)
        if b is None:
            b = self.bodies[n] = render_body(n)
        return b

    def event_list(self, n: int) -> list[bytes]:
        e = self.events.get(n)
        if e is None:
            e = self.events[n] = render_events(n)
        return e

    def stats(self, path: str) -> bytes:
        """The response to `GET /stats`; `/stats/reset` also forgets the closes recorded so far."""
        payload = msgspec.json.encode({"closes": self.closes, "requests": self.requests})
        if "reset" in path:
            self.closes.clear()
        return json_response(payload)


class Conn(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = b""
        self.transport: Any = None
        self.tracked: str | None = None  # correlation id of a drip/hold response
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.remaining = 0  # tokens left to write on a paced stream

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (request := split_request(self.buf)) is not None:
            method, path, headers, body, self.buf = request
            self.handle(method, path, headers, body)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        srv = self.server
        srv.requests += 1
        if method == "GET" and path.startswith("/stats"):
            self.transport.write(srv.stats(path))
            return
        if method == "GET" and path.startswith("/gc"):
            gc.collect()
            self.plain(b"{}")
            return
        if method != "POST" or not path.endswith("/completions"):
            self.plain(b'{"error":{"message":"not found"}}', status=b"404 Not Found")
            return
        req = decode_request(body)
        n = req.tokens
        if path.startswith("/v1/"):
            full = srv.body(n)
            self.transport.write(stream_head(len(full)) + full)
            return
        self.tracked = headers.get("x-correlation-id", f"conn-{id(self)}")
        if path.startswith("/paced/"):
            step = req.pace(25.0)
            pacer = srv.pacers.get(step)
            if pacer is None:
                pacer = srv.pacers[step] = Pacer(step)
            self.remaining = n
            self.transport.write(_HEAD_CHUNKED + _chunk(_ROLE_EVENT))
            pacer.add(self)
            return
        events = srv.event_list(n)
        total = sum(len(e) for e in events)
        if path.startswith("/bulk/"):
            self.transport.write(stream_head(total) + b"".join(events))
            return
        if path.startswith("/hold/"):
            self.transport.write(stream_head(total) + events[0] + events[1])
            return
        pace = req.pace(1.0)
        self.transport.write(stream_head(total) + events[0])
        loop = asyncio.get_running_loop()
        state = {"i": 1}

        def tick() -> None:
            if self.closed:
                return
            i = state["i"]
            if i >= len(events):
                return
            self.transport.write(events[i])
            state["i"] = i + 1
            self.timer = loop.call_later(pace, tick)

        self.timer = loop.call_later(pace, tick)

    def plain(self, payload: bytes, status: bytes = b"200 OK") -> None:
        self.transport.write(json_response(payload, status))

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        if self.tracked is not None:
            self.server.closes[self.tracked] = now
        if self.timer is not None:
            self.timer.cancel()

    def eof_received(self) -> bool:
        self._gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()


async def main(port: int) -> None:
    server = Server()
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Conn(server), "127.0.0.1", port, backlog=4096)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, help="pin the server to this CPU")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    try:
        asyncio.run(main(args.port))
    except KeyboardInterrupt:
        pass

"""The cancel benchmark's upstream: it notices a closed connection as soon as the kernel says so.

`bench_cancel.py` measures "`cancel()` returned → the upstream saw its connection closed", so
the upstream is the instrument, and `sse_server.py` is too slow an instrument for that: asyncio
learns of a reset from a failed `recv` and calls `connection_lost` one loop pass later, so it
noticed a bare socket's close (bench_cancel's `raw full` row) only 0.2 ms p50 / 0.4–0.5 ms p99
after it, more than the 0.3 ms p99 the cancel target asks to show. This server is plain Python
on `select.epoll`, in its own process (`python benchmarks/close_server.py`; the port is printed
on stdout, `--cpu N` pins it, as for `sse_server.py`), and does only what bench_cancel needs:

  /drip/v1/chat/completions    the head and the role delta, then one token event every
                               `pace_ms` (the JSON body's; default 1 ms) until the client closes
  /bulk/v1/chat/completions    the whole body (`max_tokens` tokens) at once: as much as the
                               socket takes, the rest as it drains (also what `raw full` asks for)
  GET /stats/reset             JSON {"closes": {correlation_id: monotonic seconds}, "requests": n}
                               (then forgets the closes); `GET /stats` without forgetting
The bytes are sse_server's: its rendering, request parsing and stats are imported, not copied.

How a close is noticed: every connection is registered for EPOLLIN | EPOLLRDHUP (and EPOLLHUP |
EPOLLERR, which epoll reports anyway). A FIN raises RDHUP, a reset (a client closing with bytes
unread, as a cancelled `full` stream does) HUP | ERR. `time.monotonic()` is read as soon as
`epoll.poll` returns, and before anything else in that pass every connection whose event says
the peer closed has its close recorded at that time (keyed by its request's `X-Correlation-Id`)
and its socket closed; only then are new connections accepted, requests read, queued bytes
written and due drip events sent. A close found later in a pass (a `recv` returning EOF, a
`send` failing) is recorded when it is found. The garbage collector is off: nothing here makes
a reference cycle, and a collection landing between a close and its record would be measured.
Times are `time.monotonic()`, the system-wide CLOCK_MONOTONIC the client reads too.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import itertools
import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sse_server import Server, decode_request, json_response, split_request, stream_head

#: What epoll reports for a connection. HUP and ERR are reported whether asked for or not.
WATCH = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
#: An event with one of these bits says the peer closed (RDHUP: its FIN; HUP | ERR: a reset).
CLOSED = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_NOT_FOUND = json_response(b'{"error":{"message":"not found"}}', b"404 Not Found")


class Conn:
    __slots__ = ("buf", "events", "fd", "next_event", "out", "pace", "sock", "tracked")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()  # -1 once closed
        self.buf = b""  # request bytes not yet parsed
        self.out: memoryview | None = None  # response bytes the socket has not taken yet
        self.tracked: str | None = None  # correlation id of a drip/bulk response
        self.events: list[bytes] = []  # a drip stream's events …
        self.next_event = 0  # … the next one to send …
        self.pace = 0.0  # … and the seconds between two


class CloseServer:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), select.EPOLLIN)
        self.conns: dict[int, Conn] = {}
        self.state = Server()  # sse_server's: rendered events, closes, request count
        self.bulk: dict[int, bytes] = {}  # max_tokens → the whole /bulk/ response
        self.due: list[tuple[float, int, Conn]] = []  # drip events, a heap by time
        self.seq = itertools.count()  # breaks ties in `due`

    def serve_forever(self) -> None:
        poll, monotonic, listen_fd = self.epoll.poll, time.monotonic, self.listener.fileno()
        conns, due = self.conns, self.due
        while True:
            ready = poll(max(due[0][0] - monotonic(), 0.0) if due else -1.0)
            now = monotonic()
            for fd, ev in ready:
                if ev & CLOSED and fd in conns:
                    self.gone(conns[fd], now)
            for fd, ev in ready:
                if ev & CLOSED:
                    continue  # handled above (the fd may already name a new connection)
                if fd == listen_fd:
                    self.accept()
                    continue
                conn = conns.get(fd)
                if conn is not None and ev & select.EPOLLOUT:
                    self.flush(conn)
                if conn is not None and conn.fd >= 0 and ev & select.EPOLLIN:
                    self.read(conn)
            if due:
                now = monotonic()
                while due and due[0][0] <= now:
                    _, _, conn = heapq.heappop(due)
                    if conn.fd >= 0:
                        self.drip(conn, now)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports
            conn = Conn(sock)
            self.conns[conn.fd] = conn
            self.epoll.register(conn.fd, WATCH)

    def gone(self, conn: Conn, at: float) -> None:
        """The peer closed `conn` (noticed at `at`): record it, then close our side."""
        if conn.tracked is not None:
            self.state.closes[conn.tracked] = at
        del self.conns[conn.fd]
        self.epoll.unregister(conn.fd)
        conn.sock.close()
        conn.fd = -1

    def read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.gone(conn, time.monotonic())
            return
        conn.buf += data
        while conn.fd >= 0 and (request := split_request(conn.buf)) is not None:
            method, path, headers, body, conn.buf = request
            self.handle(conn, method, path, headers, body)

    def handle(
        self, conn: Conn, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> None:
        state = self.state
        state.requests += 1
        if method == "GET" and path.startswith("/stats"):
            self.send(conn, state.stats(path))
            return
        drip = path.startswith("/drip/")
        if (
            method != "POST"
            or not path.endswith("/completions")
            or not (drip or path.startswith("/bulk/"))
        ):
            self.send(conn, _NOT_FOUND)
            return
        req = decode_request(body)
        conn.tracked = headers.get("x-correlation-id", f"conn-{id(conn)}")
        if not drip:
            response = self.bulk.get(req.tokens)
            if response is None:
                full = state.body(req.tokens)
                response = self.bulk[req.tokens] = stream_head(len(full)) + full
            self.send(conn, response)
            return
        conn.events = events = state.event_list(req.tokens)
        conn.next_event, conn.pace = 1, req.pace(1.0)
        self.send(conn, stream_head(sum(len(e) for e in events)) + events[0])
        heapq.heappush(self.due, (time.monotonic() + conn.pace, next(self.seq), conn))

    def drip(self, conn: Conn, now: float) -> None:
        """Send a drip stream's next event and schedule the one after it."""
        i = conn.next_event
        if i >= len(conn.events):
            return
        conn.next_event = i + 1
        self.send(conn, conn.events[i])
        if conn.fd >= 0:
            heapq.heappush(self.due, (now + conn.pace, next(self.seq), conn))

    def send(self, conn: Conn, data: bytes) -> None:
        """Write `data` after anything still queued; queue what the socket does not take."""
        if conn.out is not None:
            conn.out = memoryview(bytes(conn.out) + data)
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.gone(conn, time.monotonic())
            return
        if sent < len(data):
            conn.out = memoryview(data)[sent:]
            self.epoll.modify(conn.fd, WATCH | select.EPOLLOUT)

    def flush(self, conn: Conn) -> None:
        """The socket takes more: write what is queued; stop watching for room once it is empty."""
        out = conn.out
        if out is None:
            return
        try:
            sent = conn.sock.send(out)
        except BlockingIOError:
            return
        except OSError:
            self.gone(conn, time.monotonic())
            return
        if sent < len(out):
            conn.out = out[sent:]
            return
        conn.out = None
        self.epoll.modify(conn.fd, WATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, help="pin the server to this CPU")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(4096)
    listener.setblocking(False)
    server = CloseServer(listener)
    print(listener.getsockname()[1], flush=True)
    gc.disable()  # see the module header
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""An OpenAI-compatible upstream on loopback, for tests and the demo. HTTP/1.1 on trio + h11.

It is a real server on a real socket (127.0.0.1, port 0 unless told), started with
`nursery.start(upstream.serve)` or `async with open_upstream() as upstream`. It streams chat,
legacy completions and responses from a scripted text at a chosen pace (responses in the
flavor's shape: OpenAI's and vLLM's, llama.cpp's or LiteLLM's, see `render_responses_stream`), serves the probes real engines
have (`/v1/models`, `/health`, `/props`, `/slots`, `/version`, in the shape of llama.cpp's server
or of vLLM), and plays scripted replies (`script(...)`), one per completion request, so that
each attempt of a retried task can meet a different fault.

It records what it saw: every request (headers and JSON body), the connections open, and each
client that went away in the middle of a response (`disconnects`, `disconnected`), which is how
tests prove that a cancel closed the upstream response.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, TypeVar

import h11
import msgspec
import trio

from ._script import (
    Hang,
    RecordedRequest,
    Reply,
    Reset,
    ResponsesShape,
    Send,
    Sleep,
    Step,
    Stream,
    expand_steps,
    render_responses_stream,
    render_stream,
    split_words,
)

__all__ = ["FakeUpstream", "open_upstream"]

DEFAULT_TEXT = (
    "Trio makes structured concurrency feel natural: every task has a parent, every cancel "
    "has a scope, and nothing outlives the block that started it."
)

_json = msgspec.json.Encoder()
MAX_BODY = 1 << 20

Flavor = Literal["llama.cpp", "vllm", "openai", "litellm"]

#: The Responses stream each flavor sends (vLLM follows OpenAI's shape).
_RESPONSES_SHAPE: dict[str, ResponsesShape] = {
    "openai": "openai",
    "vllm": "openai",
    "llama.cpp": "llama.cpp",
    "litellm": "litellm",
}


class FakeUpstream:
    """A scripted OpenAI-compatible server. See the module header."""

    def __init__(
        self,
        *,
        text: str = DEFAULT_TEXT,
        tokens: Sequence[str] | None = None,
        model: str = "test-model",
        pace: float = 0.0,
        api_key: str | None = None,
        flavor: Flavor = "llama.cpp",
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        slots: int = 4,
        n_ctx: int = 4096,
        missing: Sequence[str] = (),
    ) -> None:
        self.tokens: list[str] = list(tokens) if tokens is not None else split_words(text)
        self.model = model
        self.pace = pace
        self.api_key = api_key
        self.flavor: Flavor = flavor
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.slots = slots
        self.n_ctx = n_ctx
        self.replies: deque[Reply] = deque()
        self.replies_for: dict[str, deque[Reply]] = {}  # by X-Correlation-Id
        self._quiet = trio.lowlevel.ParkingLot()  # unparked whenever a connection/stream ends
        self.requests: list[RecordedRequest] = []
        self.connections_open = 0
        self.connections_total = 0
        self.streams_open = 0
        self.disconnects = 0
        self.disconnected = trio.Event()
        self.probe_overrides: dict[str, tuple[int, Any]] = {}  # path -> (status, JSON body)
        self.missing = set(missing)  # probe paths answered with 404, e.g. {"/v1/models"}
        self.loading = False  # answer probes and completions with llama.cpp's 503 "Loading model"

    # --- set-up --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = "localhost" if self.ssl_context is not None else self.host
        return f"{scheme}://{host}:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next completion requests, one each, in order."""
        self.replies.extend(replies)

    def script_for(self, correlation_id: str, *replies: Reply) -> None:
        """Queue replies for the completion requests that carry this `X-Correlation-Id`, so
        that concurrent tasks each meet their own faults. They go before `script()`'s queue."""
        self.replies_for.setdefault(correlation_id, deque()).extend(replies)

    def _next_reply(self, req: RecordedRequest) -> Reply:
        queue = self.replies_for.get(req.headers.get("x-correlation-id", ""))
        if queue:
            reply = queue.popleft()
            if not queue:
                del self.replies_for[req.headers["x-correlation-id"]]
            return reply
        return self.replies.popleft() if self.replies else Reply()

    async def wait_quiet(self, connections: int = 0) -> None:
        """Wait until no stream and at most `connections` connections are open."""
        while self.streams_open > 0 or self.connections_open > connections:
            await self._quiet.park()

    def completion_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST"]

    async def serve(
        self, *, task_status: trio.TaskStatus[FakeUpstream] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self)
            await trio.serve_listeners(self._handle_quietly, listeners, handler_nursery=nursery)

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
                req = await self._read_request(conn, stream)
                if req is None:
                    return
                keep = await self._respond(conn, stream, sock, req)
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

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream
    ) -> RecordedRequest | None:
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
                request = RecordedRequest.received(
                    head.method.decode(),
                    head.target.decode(),
                    {k.decode().lower(): v.decode() for k, v in head.headers},
                    bytes(body),
                    at=trio.current_time(),
                )
                self.requests.append(request)
                return request
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    # --- responses -----------------------------------------------------------------------

    async def _respond(
        self, conn: h11.Connection, stream: trio.abc.Stream, sock: Any, req: RecordedRequest
    ) -> bool:
        path = req.path.split("?", 1)[0]
        if req.method == "POST" and path in (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/responses",
        ):
            return await self._completion(conn, stream, sock, req, path)
        status, body = self._probe(req, path)
        await self._send_plain(conn, stream, status, body)
        return True

    def _authorized(self, req: RecordedRequest) -> tuple[bool, str]:
        if self.api_key is None:
            return True, ""
        given = req.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else given
        return token == self.api_key, token

    def _unauthorized(self, token: str) -> dict[str, Any]:
        # OpenAI echoes the key it was given; so do we, so tests can prove we redact it.
        return {
            "error": {
                "message": f"Incorrect API key provided: {token or '(none)'}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }

    def _probe(self, req: RecordedRequest, path: str) -> tuple[int, Any]:
        loading = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
        not_found = {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}
        ok, token = self._authorized(req)
        if req.method != "GET" or path in self.missing:
            return 404, not_found
        if path in self.probe_overrides:
            return self.probe_overrides[path]
        if path == "/health":
            if self.flavor == "openai":
                return 404, not_found
            return (503, loading) if self.loading else (200, {"status": "ok"})
        if self.loading:
            return 503, loading
        if path in ("/v1/models", "/props", "/slots", "/version", "/metrics") and not ok:
            return 401, self._unauthorized(token)
        if path == "/v1/models":
            entry: dict[str, Any] = {"id": self.model, "object": "model", "created": 1764000000}
            if self.flavor == "llama.cpp":
                entry |= {"owned_by": "llamacpp", "meta": {"n_ctx_train": self.n_ctx}}
            else:
                entry |= {"owned_by": self.flavor, "max_model_len": self.n_ctx}
            return 200, {"object": "list", "data": [entry]}
        if self.flavor == "llama.cpp":
            per_slot = self.n_ctx // self.slots
            if path == "/props":
                return 200, {
                    "default_generation_settings": {"n_ctx": per_slot, "model": self.model},
                    "total_slots": self.slots,
                    "model_path": f"/models/{self.model}.gguf",
                    "build_info": "b1-0c1e570",
                }
            if path == "/slots":
                busy = min(self.streams_open, self.slots)
                return 200, [
                    {"id": i, "is_processing": i < busy, "n_ctx": per_slot}
                    for i in range(self.slots)
                ]
        if self.flavor == "vllm":
            if path == "/version":
                return 200, {"version": "0.11.0"}
            if path == "/metrics":
                text = (
                    "# HELP vllm:num_requests_running Number of requests running.\n"
                    f'vllm:num_requests_running{{model_name="{self.model}"}} {self.streams_open}.0\n'
                    f'vllm:num_requests_waiting{{model_name="{self.model}"}} 0.0\n'
                )
                return 200, text.encode()
        return 404, not_found

    async def _send_plain(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        status: int,
        body: Any,
        headers: Sequence[tuple[str, str]] = (),
        content_type: str | None = None,
    ) -> None:
        raw = body if isinstance(body, bytes) else _json.encode(body)
        if content_type is None:
            content_type = "application/json" if raw[:1] in (b"{", b"[") else "text/plain"
        hdrs = [
            ("content-type", content_type),
            ("content-length", str(len(raw))),
            ("server", "fake-upstream"),
            *headers,
        ]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=hdrs)) or b"")
        await stream.send_all(
            (conn.send(h11.Data(data=raw)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        )

    async def _completion(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        sock: Any,
        req: RecordedRequest,
        path: str,
    ) -> bool:
        reply = self._next_reply(req)
        before = [*([Sleep(reply.delay)] if reply.delay else []), *reply.before]
        if before and not await self._play(conn, stream, sock, before, raw=True):
            return False
        ok, token = self._authorized(req)
        if not ok:
            await self._send_plain(conn, stream, 401, self._unauthorized(token))
            return True
        if self.loading:
            body = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
            await self._send_plain(conn, stream, 503, body)
            return True
        if reply.steps is not None and not reply.steps and (reply.status >= 300 or reply.body):
            await self._send_plain(
                conn, stream, reply.status, reply.body, reply.headers, reply.content_type
            )
            return True
        steps = expand_steps(
            reply.steps if reply.steps is not None else [Stream()],
            self._default_steps(req, path),
        )
        content_type = reply.content_type or "text/event-stream"
        hdrs = [
            ("content-type", content_type),
            ("cache-control", "no-cache"),
            ("x-request-id", f"req-{len(self.requests)}"),
            ("server", "fake-upstream"),
            *reply.headers,
        ]
        await stream.send_all(
            conn.send(h11.Response(status_code=reply.status, headers=hdrs)) or b""
        )
        return await self._play(conn, stream, sock, steps)

    def _default_steps(self, req: RecordedRequest, path: str) -> list[Step]:
        body = req.json if isinstance(req.json, dict) else {}
        tokens = self.tokens
        finish: Literal["stop", "length"] = "stop"
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if path.endswith("/responses"):
            limit = body.get("max_output_tokens")
        if isinstance(limit, int) and 0 < limit < len(tokens):
            tokens, finish = tokens[:limit], "length"
        if path.endswith("/responses"):
            return render_responses_stream(
                tokens,
                shape=_RESPONSES_SHAPE[self.flavor],
                finish=finish,
                usage=(_prompt_tokens(body), len(tokens)),
                model=self.model,
                pace=self.pace,
            )
        usage = None
        options = body.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            usage = (_prompt_tokens(body), len(tokens))
        api: Literal["chat", "completions"] = (
            "chat" if path.endswith("chat/completions") else "completions"
        )
        return render_stream(
            api, tokens, finish=finish, usage=usage, model=self.model, pace=self.pace
        )

    async def _play(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        sock: Any,
        steps: list[Step],
        *,
        raw: bool = False,
    ) -> bool:
        """Send the steps while watching for the client going away. True: keep the connection.
        `raw`: before the status line — bytes go out as they are and the response is not ended."""
        gone = False
        self.streams_open += 1
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
                    for step in steps:
                        if isinstance(step, Send):
                            data = step.data if raw else conn.send(h11.Data(data=step.data))
                            await stream.send_all(data or b"")
                        elif isinstance(step, Sleep):
                            await trio.sleep(step.seconds)
                        elif isinstance(step, Reset):
                            abort(sock)
                            return False
                        elif isinstance(step, Hang):
                            while step.drip:
                                await trio.sleep(step.every)
                                data = step.drip if raw else conn.send(h11.Data(data=step.drip))
                                await stream.send_all(data or b"")
                            await trio.sleep_forever()
                    if not raw:
                        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    gone = True
                nursery.cancel_scope.cancel()
        finally:
            self.streams_open -= 1
            self._quiet.unpark_all()
            if gone:
                self.disconnects += 1
                self.disconnected.set()
        return not gone


def _prompt_tokens(body: dict[str, Any]) -> int:
    if isinstance(body.get("prompt"), str):
        return len(split_words(body["prompt"]))
    count = 0
    for m in body.get("messages") or body.get("input") or []:
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            count += len(split_words(m["content"]))
    if isinstance(body.get("input"), str):
        count = len(split_words(body["input"]))
    return count


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

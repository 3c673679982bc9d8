"""The clients being compared, each a small function over one local upstream.

- `adapter_*`: `oai_adapter` as a user drives it (`submit`, `async for ev in events`), on trio.
- `sdk_*`: the official `openai` SDK as its docs show (`AsyncOpenAI`, `stream=True`, iterate the
  chunks, read `delta.content`), on asyncio.
- `floor_*`: the fastest this stack can go: httpx2 streaming on trio, a minimal line split and a
  msgspec view decode per `data:` line, no events, no channel. Nothing faster is on the table
  without leaving httpx2.
- `raw_*`: a raw socket and a hand-written request, counting event frames (`\\n\\n`) without
  parsing them: proves the upstream is not what limits the others.
- `h11_*` (the decode-step benchmark): trio streams + h11 + the floor's line split and decode,
  no pool — alone (`h11_stream`), and in the design's shape at its leanest (`h11_task_stream`:
  a per-stream nursery, a reader task with one deadline scope whose deadline moves, a bounded
  memory channel carrying one batch per read): the floor any client of this design can reach.

`on_text(text)`, where taken, is called with each token's text (`str`, or `bytes` for the raw
clients), for probes that read what the upstream wrote into it.

Each returns what it measured; the programs time them and take medians.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import msgspec

MODEL = "bench-model"
MESSAGES = [{"role": "user", "content": "Say many words."}]


def chat_body(n: int, **extra: Any) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": n,
            "stream": True,
            "stream_options": {"include_usage": True},
            **extra,
        }
    ).encode()


# --- floor: httpx2 + line split + msgspec view decode -----------------------------------


class _FDelta(msgspec.Struct, gc=False):
    content: str | None = None


class _FChoice(msgspec.Struct, gc=False):
    delta: _FDelta | None = None


class _FChunk(msgspec.Struct, gc=False):
    choices: list[_FChoice] | None = None


_floor_decoder = msgspec.json.Decoder(_FChunk)


async def floor_stream(
    client: Any, url: str, body: bytes, on_token: Any = None, on_text: Any = None
) -> int:
    """Tokens read. `on_token(i)` is called for each, when given (timing probes)."""
    decode = _floor_decoder.decode
    tokens = 0
    rest = b""
    async with client.stream(
        "POST", url, content=body, headers={"content-type": "application/json"}
    ) as response:
        async for chunk in response.aiter_raw():
            lines = (rest + chunk if rest else chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line[:6] == b"data: " and line[6:7] == b"{":
                    choices = decode(line[6:]).choices
                    if choices and (delta := choices[0].delta) is not None and delta.content:
                        if on_token is not None:
                            on_token(tokens)
                        elif on_text is not None:
                            on_text(delta.content)
                        tokens += 1
    return tokens


def floor_texts(rest: bytes, chunk: bytes) -> tuple[bytes, list[str]]:
    """The floor's loop over one read, for the h11 clients: (the unfinished line, the texts)."""
    decode = _floor_decoder.decode
    lines = (rest + chunk if rest else chunk).split(b"\n")
    rest = lines.pop()
    texts = []
    for line in lines:
        if line[:6] == b"data: " and line[6:7] == b"{":
            choices = decode(line[6:]).choices
            if choices and (delta := choices[0].delta) is not None and delta.content:
                texts.append(delta.content)
    return rest, texts


def floor_client(max_connections: int = 100) -> Any:
    """httpx2 with the adapter's pool limits (`_http.MAX_KEEPALIVE` idle connections kept)."""
    import httpx2

    from oai_adapter._http import MAX_KEEPALIVE

    limits = httpx2.Limits(
        max_connections=max_connections,
        max_keepalive_connections=min(max_connections, MAX_KEEPALIVE),
    )
    return httpx2.AsyncClient(
        limits=limits, timeout=httpx2.Timeout(30.0, read=None, pool=None), trust_env=False
    )


# --- adapter -------------------------------------------------------------------------------


def adapter_config(port: int, prefix: str = "", max_connections: int = 100, **kw: Any) -> Any:
    from oai_adapter import AdapterConfig, RetryPolicy, Timeouts

    return AdapterConfig(
        base_url=f"http://127.0.0.1:{port}{prefix}/v1",
        model=MODEL,
        max_connections=max_connections,
        retry=RetryPolicy(max_attempts=1),
        timeouts=Timeouts(connect=30.0, first_token=120.0, idle=120.0, total=600.0),
        **kw,
    )


async def open_warm_adapter(port: int, prefix: str, max_connections: int) -> Any:
    """An entered `OpenAIAdapter` on `prefix`, after one stream through a throwaway adapter on
    the plain path (imports, TLS context and code paths warm; the measured one starts with no
    pooled connection). The caller leaves it with `__aexit__`."""
    from oai_adapter import OpenAIAdapter

    warm = OpenAIAdapter(adapter_config(port, max_connections=max_connections))
    async with warm:
        await adapter_stream(warm, "warm", 4)
    adapter = OpenAIAdapter(adapter_config(port, prefix, max_connections=max_connections))
    await adapter.__aenter__()
    return adapter


async def adapter_stream(
    adapter: Any,
    task_id: str,
    n: int,
    on_token: Any = None,
    extra: Any = None,
    on_text: Any = None,
) -> int:
    from oai_adapter import End, TaskRequest, Token

    tokens = 0
    req = TaskRequest(task_id=task_id, messages=MESSAGES, max_tokens=n, extra=extra)
    async with adapter.submit(req) as events:
        async for ev in events:
            if type(ev) is Token:
                if on_token is not None:
                    on_token(tokens)
                elif on_text is not None:
                    on_text(ev.text)
                tokens += 1
            elif type(ev) is End:
                if ev.reason not in ("stop", "length"):
                    raise RuntimeError(f"stream ended with {ev}")
    return tokens


# --- the official SDK ------------------------------------------------------------------------


def sdk_client(port: int, prefix: str = "", max_connections: int = 100) -> Any:
    import httpx2
    import openai

    # The connection limit raised for the run; keep-alive as the SDK's own default (100).
    http_client = openai.DefaultAsyncHttpxClient(
        limits=httpx2.Limits(
            max_connections=max(max_connections, 1000), max_keepalive_connections=100
        ),
        timeout=httpx2.Timeout(600.0, connect=30.0),
    )
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}{prefix}/v1",
        api_key="sk-bench",
        max_retries=0,
        http_client=http_client,
    )


async def sdk_stream(
    client: Any, n: int, on_token: Any = None, extra: Any = None, on_text: Any = None
) -> int:
    tokens = 0
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=n,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices and (text := chunk.choices[0].delta.content):
                if on_token is not None:
                    on_token(tokens)
                elif on_text is not None:
                    on_text(text)
                tokens += 1
    return tokens


# --- raw socket ------------------------------------------------------------------------------


def raw_request(port: int, body: bytes, path: str = "/v1/chat/completions") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def raw_blocking_stream(port: int, n: int) -> tuple[int, float]:
    """One stream on a fresh blocking socket: (event frames seen, seconds)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(raw_request(port, chat_body(n)))
        frames = 0
        tail = b""
        while True:
            data = sock.recv(1 << 16)
            if not data:
                break
            joined = tail + data
            frames += joined.count(b"\n\n")
            tail = joined[-1:]
            if joined.endswith(b"data: [DONE]\n\n"):
                break
    return frames, time.perf_counter() - t0


def raw_concurrent(
    port: int, streams: int, n: int, path: str = "/v1/chat/completions", hold: bool = False
) -> dict[str, Any]:
    """`streams` concurrent streams on raw non-blocking sockets, one selector, one thread.

    Counts event frames without parsing them. With `hold`, returns once every stream has its
    first bytes (RSS can then be read with all of them open) and leaves the sockets open in
    the result's "sockets" for the caller to close.
    """
    import selectors

    sel = selectors.DefaultSelector()
    request = raw_request(port, chat_body(n), path)
    expected = n + 4  # role, n tokens, finish, usage, [DONE]
    started = time.perf_counter()
    first: dict[int, float] = {}
    frames: dict[int, int] = {}
    tails: dict[int, bytes] = {}
    socks: list[socket.socket] = []
    for i in range(streams):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE, i)
        socks.append(s)
    done = 0
    while done < streams:
        for key, mask in sel.select(timeout=30):
            fileobj, i = key.fileobj, key.data
            assert isinstance(fileobj, socket.socket)
            s = fileobj
            if mask & selectors.EVENT_WRITE:
                s.sendall(request)
                sel.modify(s, selectors.EVENT_READ, i)
                continue
            data = s.recv(1 << 16)
            if i not in first:
                first[i] = time.perf_counter()
                if hold:
                    done += 1
                    sel.unregister(s)
                    continue
            if not data:
                raise RuntimeError("the upstream closed early")
            joined = tails.get(i, b"") + data
            frames[i] = frames.get(i, 0) + joined.count(b"\n\n")
            tails[i] = joined[-1:]
            if frames[i] >= expected:
                done += 1
                sel.unregister(s)
                s.close()
    wall = time.perf_counter() - started
    sel.close()
    ttft = [first[i] - started for i in first]
    return {"wall": wall, "ttft": ttft, "sockets": socks if hold else []}


#: The raw and h11 contenders connect through `trio.open_tcp_stream` (happy eyeballs, what a
#: trio client writes); True: through the adapter's own direct connect to an IP address
#: (`oai_adapter._connect.open_tcp`), to compare set-up with the connect taken out.
DIRECT_CONNECT = False


async def tcp_connect(port: int) -> Any:
    """A contender's connection to the upstream on 127.0.0.1 (see `DIRECT_CONNECT`)."""
    import trio

    if DIRECT_CONNECT:
        from oai_adapter._connect import open_tcp

        return await open_tcp("127.0.0.1", port)
    return await trio.open_tcp_stream("127.0.0.1", port)


async def raw_trio_stream(port: int, path: str, body: bytes, on_text: Any) -> int:
    """One stream on a trio socket stream: the tokens' texts found in the bytes (`"content":"…"`),
    no HTTP parsing (the chunked framing is skipped over, not decoded)."""

    marker = b'"content":"'
    keep = len(marker) - 1  # a tail this short cannot hold a whole marker: nothing is seen twice
    tokens = 0
    stream = await tcp_connect(port)
    async with stream:
        await stream.send_all(raw_request(port, body, path))
        tail = b""
        while True:
            data = await stream.receive_some(1 << 16)
            if not data:
                return tokens
            buf = tail + data if tail else data
            tail = buf[-keep:]
            start = 0
            while (i := buf.find(marker, start)) >= 0:
                j = buf.find(b'"', i + len(marker))
                if j < 0:
                    tail = buf[i:]
                    break
                if j > i + len(marker):
                    on_text(buf[i + len(marker) : j])
                    tokens += 1
                start = j
            if b"data: [DONE]" in buf:
                return tokens


class H11Reader:
    """One HTTP/1.1 request on its own trio connection, read with h11 (no pool): `open()`, then
    `next_texts()` per network read."""

    __slots__ = ("_conn", "_rest", "_stream", "body", "path", "port")

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.port, self.path, self.body = port, path, body
        self._stream: Any = None
        self._conn: Any = None
        self._rest: bytes | None = b""  # None once the body has ended

    async def open(self) -> None:
        import h11

        self._stream = await tcp_connect(self.port)
        self._conn = conn = h11.Connection(h11.CLIENT)
        headers = [
            ("host", f"127.0.0.1:{self.port}"),
            ("content-type", "application/json"),
            ("content-length", str(len(self.body))),
        ]
        await self._stream.send_all(
            conn.send(h11.Request(method="POST", target=self.path, headers=headers))
            + conn.send(h11.Data(data=self.body))
            + conn.send(h11.EndOfMessage())
        )

    async def next_texts(self) -> list[str] | None:
        """The token texts of the next network read ([] for none), None at the body's end."""
        import h11

        conn = self._conn
        texts: list[str] = []
        if self._rest is None:
            return None  # ended
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if texts:
                    return texts
                conn.receive_data(await self._stream.receive_some(1 << 16))
                continue
            if type(event) is h11.Data:
                self._rest, more = floor_texts(self._rest or b"", event.data)
                texts += more
            else:  # the response's head, an interim response; or its end
                if type(event) is h11.EndOfMessage or event is h11.PAUSED:
                    self._rest = None
                    return texts or None

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()


async def h11_stream(port: int, path: str, body: bytes, on_text: Any) -> int:
    """trio + h11 + the floor's line split and decode, in the caller's task."""
    tokens = 0
    reader = H11Reader(port, path, body)
    try:
        await reader.open()
        while (texts := await reader.next_texts()) is not None:
            for text in texts:
                on_text(text)
            tokens += len(texts)
    finally:
        await reader.aclose()
    return tokens


async def h11_task_stream(
    port: int, path: str, body: bytes, on_text: Any, idle: float = 120.0
) -> int:
    """`h11_stream` in the design's shape at its leanest: a nursery per stream, the reader in
    its own task under one cancel scope whose deadline moves with every read (the idle
    timeout), one batch per read over a bounded memory channel (16 batches, as the adapter)."""
    import trio

    send, receive = trio.open_memory_channel[list[str]](16)
    tokens = 0

    async def read(send: trio.MemorySendChannel[list[str]]) -> None:
        reader = H11Reader(port, path, body)
        try:
            async with send:
                with trio.CancelScope() as scope:
                    await reader.open()
                    while True:
                        scope.deadline = trio.current_time() + idle
                        texts = await reader.next_texts()
                        if texts is None:
                            return
                        if texts:
                            try:
                                send.send_nowait(texts)
                            except trio.WouldBlock:
                                await send.send(texts)
                if scope.cancelled_caught:
                    raise TimeoutError("idle timeout")
        finally:
            with trio.move_on_after(1.0, shield=True):
                await reader.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, send)
        async with receive:
            async for batch in receive:
                for text in batch:
                    on_text(text)
                tokens += len(batch)
    return tokens

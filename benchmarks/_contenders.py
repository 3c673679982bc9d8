"""The clients being compared, each a small function over one local upstream.

- `adapter_*`: `oai_adapter` as a user drives it (`submit`, `async for ev in events`), on trio.
- `sdk_*`: the official `openai` SDK as its docs show (`AsyncOpenAI`, `stream=True`, iterate the
  chunks, read `delta.content`), on asyncio.
- `floor_*`: the fastest this stack can go: httpx2 streaming on trio, a minimal line split and a
  msgspec view decode per `data:` line, no events, no channel. Nothing faster is on the table
  without leaving httpx2.
- `raw_*`: a raw socket and a hand-written request, counting event frames (`\\n\\n`) without
  parsing them: proves the upstream is not what limits the others.

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


async def floor_stream(client: Any, url: str, body: bytes, on_token: Any = None) -> int:
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
                        tokens += 1
    return tokens


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


async def adapter_stream(
    adapter: Any, task_id: str, n: int, on_token: Any = None, extra: Any = None
) -> int:
    from oai_adapter import End, TaskRequest, Token

    tokens = 0
    req = TaskRequest(task_id=task_id, messages=MESSAGES, max_tokens=n, extra=extra)
    async with adapter.submit(req) as events:
        async for ev in events:
            if type(ev) is Token:
                if on_token is not None:
                    on_token(tokens)
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


async def sdk_stream(client: Any, n: int, on_token: Any = None, extra: Any = None) -> int:
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
            if chunk.choices and chunk.choices[0].delta.content:
                if on_token is not None:
                    on_token(tokens)
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
            s, i = key.fileobj, key.data
            assert isinstance(s, socket.socket)
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

"""Microbenchmarks of the hot path, one per stage, per token (ns), in one process.

Stages, in the order a token meets them:
  sse_split  `SSEDecoder.feed` on 64 KiB network reads of a chat stream → (name, data) pairs
  decode     `msgspec` view-Struct decode of one `data:` payload (the mapper's decoder)
  map        `ChatMapper.feed`: decode + the quirk checks + `Token` construction
  channel    one batch per network read over the bounded trio memory channel, unpacked by
             `EventStream.__anext__` (its checkpoints included), consumer reading every event
  pipeline   all of the above from bytes to the consumer's `async for` (no socket)
and, for comparison, what the FACTS note measured:
  json.loads         the stdlib decode of one payload
  channel per token  one memory-channel `send`/`receive` pair per Token
  floor split        the floor's own line split + decode (benchmarks/_contenders.py)

    python benchmarks/micro_stages.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: F401  (puts the repository on sys.path)
from sse_server import render_events

TOKENS = 10_000
READ = 64 * 1024


def _chunks(body: bytes, size: int = READ) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Fewest seconds of `repeat` calls (after one warm-up): like `timeit`, the minimum is the
    cost of the code itself; what other processes on the machine add only ever lengthens it."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    repeat = 5 if args.quick else 25

    import msgspec
    import trio

    from oai_adapter._events import Event, Token
    from oai_adapter._mappers import ChatMapper, _chunk_decoder
    from oai_adapter._sse import SSEDecoder
    from oai_adapter._stream import CHANNEL_BATCHES, EventStream

    events = render_events(TOKENS)
    body = b"".join(events)
    chunks = _chunks(body)
    payloads = [e[6:-2] for e in events if e.startswith(b"data: {")]
    n = TOKENS

    def sse_split() -> None:
        dec = SSEDecoder()
        for ch in chunks:
            dec.feed(ch)

    def decode() -> None:
        d = _chunk_decoder.decode
        for p in payloads:
            d(p)

    def json_loads() -> None:
        loads = json.loads
        for p in payloads:
            loads(p)

    # The events of each 64 KiB read, as the reader hands them to the mapper.
    per_read: list[list[tuple[str, bytes]]] = []
    splitter = SSEDecoder()
    for ch in chunks:
        per_read.append(splitter.feed(ch))

    def feed_read(m: ChatMapper, events: list[tuple[str, bytes]], out: list[Event]) -> None:
        for name, data in events:  # as `_task._Reader._map` does
            m.feed(name, data, out)
            if m.done:
                break

    def map_stage() -> None:
        m = ChatMapper("t-1")
        out: list[Event] = []
        for events in per_read:
            feed_read(m, events, out)

    def floor_split() -> None:
        import _contenders as c

        decode = c._floor_decoder.decode
        rest = b""
        for chunk in chunks:
            lines = (rest + chunk if rest else chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line[:6] == b"data: " and line[6:7] == b"{":
                    choices = decode(line[6:]).choices
                    if choices and (delta := choices[0].delta) is not None and delta.content:
                        pass

    # Pre-built batches, as the reader would send them (one list per 64 KiB read).
    batches: list[list[Event]] = []
    dec, mapper = SSEDecoder(), ChatMapper("t-1")
    for ch in chunks:
        out: list[Event] = []
        feed_read(mapper, dec.feed(ch), out)
        batches.append(out)

    class _State:  # what EventStream reads of a TaskState
        cancel_requested = False
        task_id = "t-1"
        done = None

    class _Registry:  # what EventStream calls on a TaskRegistry
        def discard(self, state: object) -> None:
            pass

    class _Log:
        tokens_out = 0

        def info(self, *a: object, **k: object) -> None:
            pass

    def channel() -> None:
        async def run() -> None:
            send, receive = trio.open_memory_channel[list[Event]](CHANNEL_BATCHES)
            stream = EventStream(_State(), receive, _Log(), _Registry())  # type: ignore[arg-type]

            async def producer() -> None:
                async with send:
                    for b in batches:
                        try:
                            send.send_nowait(b)
                        except trio.WouldBlock:
                            await send.send(b)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                count = 0
                try:
                    async for ev in stream:
                        if type(ev) is Token:
                            count += 1
                except RuntimeError:  # no End in these batches: the channel closed
                    pass

        trio.run(run)

    def channel_per_token() -> None:
        tokens = [Token(task_id="t-1", index=i, text="x") for i in range(n)]

        async def run() -> None:
            send, receive = trio.open_memory_channel[Token](CHANNEL_BATCHES)

            async def producer() -> None:
                async with send:
                    for t in tokens:
                        await send.send(t)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                async for _ in receive:
                    pass

        trio.run(run)

    def pipeline() -> None:
        async def run() -> None:
            send, receive = trio.open_memory_channel[list[Event]](CHANNEL_BATCHES)
            stream = EventStream(_State(), receive, _Log(), _Registry())  # type: ignore[arg-type]

            async def producer() -> None:
                dec, m = SSEDecoder(), ChatMapper("t-1")
                async with send:
                    for ch in chunks:
                        out: list[Event] = []
                        feed_read(m, dec.feed(ch), out)
                        try:
                            send.send_nowait(out)
                        except trio.WouldBlock:
                            await send.send(out)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                try:
                    async for _ in stream:
                        pass
                except RuntimeError:
                    pass

        trio.run(run)

    trio_empty = best_of(lambda: trio.run(trio.sleep, 0), repeat)
    stages = {
        "sse_split": best_of(sse_split, repeat),
        "decode": best_of(decode, repeat),
        "map": best_of(map_stage, repeat),
        "channel": best_of(channel, repeat) - trio_empty,
        "pipeline": best_of(pipeline, repeat) - trio_empty,
        "json.loads": best_of(json_loads, repeat),
        "channel per token": best_of(channel_per_token, repeat) - trio_empty,
        "floor split+decode": best_of(floor_split, repeat),
    }
    del msgspec
    print(
        f"Hot-path stages, per token ({n:,}-token chat stream, {READ // 1024} KiB reads, best of {repeat})"
    )
    result: dict[str, float] = {}
    for name, secs in stages.items():
        ns = secs / n * 1e9
        result[name] = ns
        print(f"  {name:<20} {ns:8.0f} ns")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ns_per_token": result}, f, indent=1)


if __name__ == "__main__":
    main()

"""HTTP/2 vs HTTP/1.1 through the adapter, against the loopback test upstreams.

1. Cancel latency: `adapter.cancel()` → the upstream sees the stream end (RST_STREAM over
   HTTP/2, the connection closing over HTTP/1.1), median and p99 over N cancels.
2. Throughput: 100 concurrent streams of 500 tokens over one HTTP/2 connection vs 100 HTTP/1.1
   connections, in tokens per second (consumer side).

Client and server share one process and one trio run (2 cores here), so the figures compare
the two protocols on this stack; they are not a server benchmark. Run:
`uv run python benchmarks/bench_h2.py`.
"""

from __future__ import annotations

import statistics
import time

import trio

from oai_adapter import AdapterConfig, OpenAIAdapter, TaskRequest, Token
from oai_adapter._cli._stats import percentile
from oai_adapter.testing import FakeUpstream, H2Upstream, Hang, Reply, Send, chat_chunk, sse

CANCELS = 300
STREAMS = 100
TOKENS = 500


def hanging() -> Reply:
    return Reply(steps=[Send(sse(chat_chunk("", role=True))), Send(sse(chat_chunk("t"))), Hang()])


async def cancel_latency(http2: bool) -> list[float]:
    upstream: FakeUpstream = H2Upstream(max_concurrent_streams=100) if http2 else FakeUpstream()
    upstream.script(*[hanging()] * CANCELS)
    out: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        config = AdapterConfig(base_url=upstream.base_url, model=upstream.model, http2=http2)
        async with OpenAIAdapter(config) as adapter:
            for i in range(CANCELS):
                async with adapter.submit(TaskRequest(task_id=f"t{i}", prompt="hi")) as events:
                    async for ev in events:
                        if isinstance(ev, Token):
                            before = len(upstream.frames) if isinstance(upstream, H2Upstream) else 0
                            seen = upstream.disconnects
                            t0 = time.perf_counter()
                            adapter.cancel(f"t{i}")
                            if isinstance(upstream, H2Upstream):
                                await upstream.wait_frames(before + 1)
                            else:
                                while upstream.disconnects == seen:
                                    await upstream.disconnected.wait()
                                    upstream.disconnected = trio.Event()
                            out.append(time.perf_counter() - t0)
        nursery.cancel_scope.cancel()
    return out


async def throughput(http2: bool) -> tuple[float, int]:
    tokens = [f" w{i}" for i in range(TOKENS)]
    upstream: FakeUpstream = (
        H2Upstream(tokens=tokens, max_concurrent_streams=STREAMS)
        if http2
        else FakeUpstream(tokens=tokens)
    )
    count = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        config = AdapterConfig(
            base_url=upstream.base_url, model=upstream.model, http2=http2, max_connections=STREAMS
        )

        async def one(adapter: OpenAIAdapter, i: int) -> None:
            nonlocal count
            async with adapter.submit(TaskRequest(task_id=f"s{i}", prompt="hi")) as events:
                async for ev in events:
                    if isinstance(ev, Token):
                        count += 1

        async with OpenAIAdapter(config) as adapter:
            t0 = time.perf_counter()
            async with trio.open_nursery() as tasks:
                for i in range(STREAMS):
                    tasks.start_soon(one, adapter, i)
            elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return count / elapsed, upstream.connections_total


async def main(quick: bool) -> dict[str, float]:
    global CANCELS
    if quick:
        CANCELS = 60
    out: dict[str, float] = {}
    print(f"cancel() → upstream sees the stream end, {CANCELS} cancels (ms)")
    for http2 in (True, False):
        lat = await cancel_latency(http2)
        name = "HTTP/2  (RST_STREAM)" if http2 else "HTTP/1.1 (close)    "
        proto = "h2" if http2 else "h1"
        out[f"cancel_{proto}_p50_ms"] = statistics.median(lat) * 1e3
        out[f"cancel_{proto}_p99_ms"] = percentile(lat, 99) * 1e3
        print(
            f"  {name}  median {statistics.median(lat) * 1e3:7.3f}  p99 {percentile(lat, 99) * 1e3:7.3f}"
        )
    print(f"\nthroughput: {STREAMS} concurrent streams × {TOKENS} tokens (tokens/s, consumer side)")
    for http2 in (True, False):
        rate, conns = await throughput(http2)
        out[f"throughput_{'h2' if http2 else 'h1'}"] = rate
        name = "HTTP/2   one connection " if http2 else "HTTP/1.1 many connections"
        print(f"  {name}  {rate:10.0f} tokens/s over {conns} connection(s)")
    print(f"  ratio HTTP/2 / HTTP/1.1: {out['throughput_h2'] / out['throughput_h1']:.2f}×")
    return out


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cancels")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    figures = trio.run(main, args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f)

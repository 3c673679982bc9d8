"""Concurrency: 1,000 concurrent 100-token chat streams through one client.

Contenders, each in its own process, against one upstream process (`sse_server.py`):
  adapter  one `OpenAIAdapter` (connection limit raised to the stream count), a trio task per stream
  sdk      one `AsyncOpenAI` (same limit), an asyncio task per stream
  floor    httpx2 on trio, line split + msgspec decode, no events (what httpx2 alone costs)
  raw      raw non-blocking sockets in one selector loop: proves the upstream is not the bottleneck
Figures: aggregate tokens/s (all tokens ÷ wall time from the first request to the last token),
p50/p99 time to first token and inter-token gap as each consumer sees them, CPU time, and RSS
per open stream — in a separate process per contender, with every stream open at once (the
upstream's `/hold/` path sends the head and the first token, then holds): (RSS with all open −
RSS after one warm-up stream) ÷ streams. Target: adapter ≥ 6× the SDK (issue 16: no regression), ≤ 20 KiB per stream.

    python benchmarks/bench_concurrency.py [--quick] [--json out.json] [--trace]

`--trace` also prints where the adapter's per-stream memory goes (tracemalloc, by the package
that allocated it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    HERE,
    machine,
    percentile,
    ratio,
    rss_kib,
    run_child,
    summarize,
    upstream_process,
    write_json,
)

STREAMS = 1000
TOKENS = 100
CONTENDERS = ("adapter", "sdk", "floor", "raw")


class Recorder:
    """Per-stream token times → TTFT and inter-token gaps."""

    def __init__(self, target: int = 0, on_all: Any = None) -> None:
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.first_seen = 0
        self.target = target
        self.on_all = on_all  # called once every stream has its first token

    def probe(self, started: float) -> Any:
        last = started
        ttft, itl = self.ttft, self.itl
        clock = time.perf_counter

        def on_token(k: int) -> None:
            nonlocal last
            now = clock()
            if k == 0:
                ttft.append(now - started)
                self.first_seen += 1
                if self.first_seen == self.target and self.on_all is not None:
                    self.on_all()
            else:
                itl.append(now - last)
            last = now

        return on_token


def child(
    kind: str, phase: str, port: int, streams: int, tokens: int, runs: int, trace: bool
) -> dict[str, Any]:
    import _contenders as c

    out: dict[str, Any] = {"runs": []}
    prefix = "/hold" if phase == "rss" else ""

    if kind == "raw":
        c.raw_concurrent(port, 10, tokens)  # warm-up
        if phase == "rss":
            gc.collect()
            base = rss_kib()
            r = c.raw_concurrent(port, streams, tokens, path="/hold/v1/chat/completions", hold=True)
            out["rss_per_stream_kib"] = (rss_kib() - base) / streams
            for s in r["sockets"]:
                s.close()
            return out
        for _ in range(runs):
            c0 = time.process_time()
            r = c.raw_concurrent(port, streams, tokens)
            out["runs"].append(
                {
                    "wall": r["wall"],
                    "cpu": time.process_time() - c0,
                    "tokens": streams * tokens,
                    "ttft": [percentile(r["ttft"], 50), percentile(r["ttft"], 99)],
                    "itl": [0.0, 0.0],
                }
            )
        return out

    if kind == "sdk":
        import asyncio

        async def sdk_main() -> None:
            client = c.sdk_client(port, prefix, max_connections=streams)
            warm = c.sdk_client(port, "", max_connections=streams)
            async with client, warm:
                await c.sdk_stream(warm, tokens)
                if phase == "rss":
                    gc.collect()
                    base = rss_kib()
                    all_open = asyncio.Event()
                    rec = Recorder(streams, all_open.set)
                    tasks = [
                        asyncio.create_task(
                            c.sdk_stream(client, tokens, rec.probe(time.perf_counter()))
                        )
                        for _ in range(streams)
                    ]
                    await all_open.wait()
                    gc.collect()
                    out["rss_per_stream_kib"] = (rss_kib() - base) / streams
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    return
                for _ in range(runs):
                    rec = Recorder()
                    t0, c0 = time.perf_counter(), time.process_time()
                    counts = await asyncio.gather(
                        *(
                            c.sdk_stream(client, tokens, rec.probe(time.perf_counter()))
                            for _ in range(streams)
                        )
                    )
                    out["runs"].append(_run(rec, t0, c0, sum(counts)))

        asyncio.run(sdk_main())
        return out

    import trio

    async def trio_main() -> None:
        from oai_adapter import OpenAIAdapter

        rec = Recorder()
        if kind == "adapter":
            adapter = OpenAIAdapter(c.adapter_config(port, prefix, max_connections=streams))
            warm = OpenAIAdapter(c.adapter_config(port, max_connections=streams))
            async with adapter, warm:
                await c.adapter_stream(warm, "warm", tokens)

                async def one(i: int, rec: Recorder, counts: list[int]) -> None:
                    counts.append(
                        await c.adapter_stream(
                            adapter, f"t-{i}", tokens, rec.probe(time.perf_counter())
                        )
                    )

                await _trio_phase(one, phase, streams, runs, out, trace)
        else:
            client = c.floor_client(streams)
            url = f"http://127.0.0.1:{port}{prefix}/v1/chat/completions"
            body = c.chat_body(tokens)
            async with client:
                await c.floor_stream(client, f"http://127.0.0.1:{port}/v1/chat/completions", body)

                async def one(i: int, rec: Recorder, counts: list[int]) -> None:
                    counts.append(
                        await c.floor_stream(client, url, body, rec.probe(time.perf_counter()))
                    )

                await _trio_phase(one, phase, streams, runs, out, trace)
        del rec

    trio.run(trio_main)
    return out


async def _trio_phase(
    one: Any, phase: str, streams: int, runs: int, out: dict[str, Any], trace: bool
) -> None:
    import trio

    if phase == "rss":
        gc.collect()
        base = rss_kib()
        if trace:
            import tracemalloc

            tracemalloc.start(1)
        all_open = trio.Event()
        rec = Recorder(streams, all_open.set)
        counts: list[int] = []
        async with trio.open_nursery() as nursery:
            for i in range(streams):
                nursery.start_soon(one, i, rec, counts)
            await all_open.wait()
            gc.collect()
            out["rss_per_stream_kib"] = (rss_kib() - base) / streams
            if trace:
                import tracemalloc

                snap = tracemalloc.take_snapshot()
                tracemalloc.stop()
                out["traced_per_stream"] = (
                    sum(s.size for s in snap.statistics("filename")) / streams
                )
                by_file: dict[str, int] = {}
                for stat in snap.statistics("lineno"):
                    key = _short(stat.traceback[0].filename)  # the allocating module's package
                    by_file[key] = by_file.get(key, 0) + stat.size
                top = sorted(by_file.items(), key=lambda kv: -kv[1])[:12]
                out["trace"] = [(k, v / streams) for k, v in top]
                lines = snap.statistics("lineno")[:15]
                out["trace_lines"] = [(str(s.traceback[0]), s.size / streams) for s in lines]
            nursery.cancel_scope.cancel()
        return
    for _ in range(runs):
        rec = Recorder()
        counts = []
        t0, c0 = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for i in range(streams):
                nursery.start_soon(one, i, rec, counts)
        out["runs"].append(_run(rec, t0, c0, sum(counts)))


def _short(path: str) -> str:
    """`oai_adapter/_task.py` for ours; the top-level package (or generated code) otherwise."""
    if "oai_adapter/" in path:
        return "oai_adapter/" + path.split("oai_adapter/", 1)[1]
    if path.startswith("<attrs generated"):
        return "trio (attrs classes)"
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1].split("/")[0]
    return os.path.basename(path)


def _run(rec: Recorder, t0: float, c0: float, tokens: int) -> dict[str, Any]:
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "cpu": time.process_time() - c0,
        "tokens": tokens,
        "ttft": [percentile(rec.ttft, 50), percentile(rec.ttft, 99)],
        "itl": [percentile(rec.itl, 50), percentile(rec.itl, 99)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--trace", action="store_true", help="tracemalloc the adapter's streams")
    parser.add_argument("--streams", type=int, default=STREAMS)
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("run", "rss"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                child(
                    args.child,
                    args.phase,
                    args.port,
                    args.streams,
                    args.tokens,
                    args.runs,
                    args.trace,
                )
            )
        )
        return

    streams, tokens = args.streams, args.tokens
    runs = {"adapter": 5, "floor": 5, "raw": 5, "sdk": 3}
    if args.quick:
        runs = {"adapter": 2, "floor": 1, "raw": 1, "sdk": 1}
    results: dict[str, Any] = {}
    with upstream_process() as port:
        for kind in CONTENDERS:
            common = [
                os.path.join(HERE, "bench_concurrency.py"),
                "--child",
                kind,
                "--port",
                str(port),
                "--streams",
                str(streams),
                "--tokens",
                str(tokens),
            ]
            r = run_child([*common, "--phase", "run", "--runs", str(runs[kind])])
            m = run_child([*common, "--phase", "rss", "--runs", "1"])
            r["rss_per_stream_kib"] = m["rss_per_stream_kib"]
            if args.trace and kind == "adapter":  # tracemalloc inflates RSS: its own process
                t = run_child([*common, "--phase", "rss", "--runs", "1", "--trace"])
                r["trace"], r["trace_lines"] = t["trace"], t["trace_lines"]
                r["traced_per_stream"] = t["traced_per_stream"]
            results[kind] = r

    print(
        f"Concurrency: {streams:,} concurrent {tokens}-token streams, each contender in its own process"
    )
    print(
        f"{'contender':<9} {'tokens/s':>10} {'spread':>7} {'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'p99':>8} {'CPU µs/tok':>10} {'RSS/stream':>11}"
    )
    out: dict[str, Any] = {"streams": streams, "tokens": tokens}
    agg = {}
    for kind in CONTENDERS:
        rs = results[kind]["runs"]
        rate = summarize([x["tokens"] / x["wall"] for x in rs])
        agg[kind] = rate.median
        ttft50 = summarize([x["ttft"][0] for x in rs]).median * 1e3
        ttft99 = summarize([x["ttft"][1] for x in rs]).median * 1e3
        itl50 = summarize([x["itl"][0] for x in rs]).median * 1e6
        itl99 = summarize([x["itl"][1] for x in rs]).median * 1e6
        cpu = summarize([x["cpu"] / x["tokens"] * 1e6 for x in rs]).median
        rss = results[kind]["rss_per_stream_kib"]
        out[kind] = {
            "tokens_per_s": rate.as_dict(),
            "ttft_ms": [ttft50, ttft99],
            "itl_us": [itl50, itl99],
            "cpu_us_per_token": cpu,
            "rss_per_stream_kib": rss,
        }
        print(
            f"{kind:<9} {rate.median:>10,.0f} {rate.spread_pct():>6.1f}% {ttft50:>7.0f}ms {ttft99:>6.0f}ms"
            f" {itl50:>6.1f}µs {itl99:>6.0f}µs {cpu:>10.2f} {rss:>8.1f}KiB"
        )
    vs_sdk = ratio(agg["adapter"], agg["sdk"])
    raw_headroom = ratio(agg["raw"], agg["adapter"])
    out["adapter_vs_sdk"] = vs_sdk
    out["raw_vs_adapter"] = raw_headroom
    rss = results["adapter"]["rss_per_stream_kib"]
    print(
        f"adapter ÷ SDK = {vs_sdk:.2f}× (target ≥ 6×) {'met' if vs_sdk >= 6 else 'MISSED'};"
        f" RSS {rss:.1f} KiB per open stream (target ≤ 20 KiB) {'met' if rss <= 20 else 'MISSED'}"
    )
    print(
        f"upstream check: the raw-socket client reads {raw_headroom:.1f}× the adapter's tokens/s"
        " from the same server, so the server is not the bottleneck"
    )
    if "trace" in results["adapter"]:
        out["adapter_trace"] = results["adapter"]["trace"]
        print(
            f"adapter, Python heap per open stream (tracemalloc): {results['adapter']['traced_per_stream']:,.0f} B; by allocating package:"
        )
        for name, size in results["adapter"]["trace"]:
            print(f"  {size:9,.0f} B  {name}")
        print("adapter, top lines:")
        for name, size in results["adapter"]["trace_lines"]:
            print(f"  {size:9,.0f} B  {name}")
    out["machine"] = machine()
    write_json(args.json, out)


if __name__ == "__main__":
    main()

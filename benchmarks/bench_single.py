"""Single stream: one 10,000-token chat stream, oai_adapter vs the openai SDK vs the floor.

Each contender runs in its own process against the same local upstream (`sse_server.py`, its
own process too), warms up, then reads the stream several times; we report the median tokens/s,
its spread (min–max over the runs) and CPU µs per token (process CPU time / tokens), and the
ratios the targets speak of: adapter ÷ SDK (target ≥ 35×, issue 16: no regression) and adapter ÷ floor (target ≥ 0.5×).

    python benchmarks/bench_single.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import HERE, machine, ratio, run_child, summarize, upstream_process, write_json

TOKENS = 10_000
CONTENDERS = ("adapter", "sdk", "floor")


def child(kind: str, port: int, runs: int, tokens: int) -> dict[str, list[float]]:
    """Run in a fresh process: warm up, then `runs` timed streams."""
    import _contenders as c

    walls: list[float] = []
    cpus: list[float] = []

    if kind == "sdk":
        import asyncio

        async def sdk_main() -> None:
            client = c.sdk_client(port)
            async with client:
                for i in range(runs + 2):
                    t0, c0 = time.perf_counter(), time.process_time()
                    count = await c.sdk_stream(client, tokens)
                    t1, c1 = time.perf_counter(), time.process_time()
                    if count != tokens:
                        raise RuntimeError(f"sdk read {count} tokens")
                    if i >= 2:
                        walls.append(t1 - t0)
                        cpus.append(c1 - c0)

        asyncio.run(sdk_main())
    else:
        import trio

        async def trio_main() -> None:
            if kind == "adapter":
                from oai_adapter import OpenAIAdapter

                async with OpenAIAdapter(c.adapter_config(port)) as adapter:
                    for i in range(runs + 2):
                        t0, c0 = time.perf_counter(), time.process_time()
                        count = await c.adapter_stream(adapter, f"t-{i}", tokens)
                        t1, c1 = time.perf_counter(), time.process_time()
                        if count != tokens:
                            raise RuntimeError(f"adapter read {count} tokens")
                        if i >= 2:
                            walls.append(t1 - t0)
                            cpus.append(c1 - c0)
            else:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                body = c.chat_body(tokens)
                async with c.floor_client() as client:
                    for i in range(runs + 2):
                        t0, c0 = time.perf_counter(), time.process_time()
                        count = await c.floor_stream(client, url, body)
                        t1, c1 = time.perf_counter(), time.process_time()
                        if count != tokens:
                            raise RuntimeError(f"floor read {count} tokens")
                        if i >= 2:
                            walls.append(t1 - t0)
                            cpus.append(c1 - c0)

        trio.run(trio_main)
    return {"wall": walls, "cpu": cpus}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.port, args.runs, args.tokens)))
        return

    n = args.tokens
    runs = (
        {"adapter": 10, "floor": 10, "sdk": 3}
        if args.quick
        else {"adapter": 30, "floor": 30, "sdk": 7}
    )
    rounds = 1 if args.quick else 3  # fresh processes per contender, interleaved
    results: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in CONTENDERS}
    with upstream_process() as port:
        for _ in range(rounds):
            for kind in CONTENDERS:
                r = run_child(
                    [
                        os.path.join(HERE, "bench_single.py"),
                        "--child",
                        kind,
                        "--port",
                        str(port),
                        "--runs",
                        str(runs[kind]),
                        "--tokens",
                        str(n),
                    ]
                )
                results[kind]["wall"] += r["wall"]
                results[kind]["cpu"] += r["cpu"]

    out: dict[str, object] = {"tokens": n}
    print(
        f"Single stream: {n:,} tokens, one upstream (sse_server.py), each contender in its own process"
    )
    print(
        f"{'contender':<10} {'tokens/s (median)':>18} {'spread':>8} {'CPU µs/token':>13} {'runs':>5}"
    )
    rates = {}
    for kind in CONTENDERS:
        wall = summarize([n / w for w in results[kind]["wall"]])
        cpu = summarize([c / n * 1e6 for c in results[kind]["cpu"]])
        rates[kind] = wall.median
        out[kind] = {"tokens_per_s": wall.as_dict(), "cpu_us_per_token": cpu.as_dict()}
        print(
            f"{kind:<10} {wall.median:>18,.0f} {wall.spread_pct():>7.1f}% {cpu.median:>13.2f} {wall.n:>5}"
        )
    vs_sdk = ratio(rates["adapter"], rates["sdk"])
    vs_floor = ratio(rates["adapter"], rates["floor"])
    out["adapter_vs_sdk"] = vs_sdk
    out["adapter_vs_floor"] = vs_floor
    print(
        f"adapter ÷ SDK   = {vs_sdk:5.2f}×   (target ≥ 35×) {'met' if vs_sdk >= 35 else 'MISSED'}"
    )
    print(
        f"adapter ÷ floor = {vs_floor:5.2f}×   (target ≥ 0.5×) {'met' if vs_floor >= 0.5 else 'MISSED'}"
    )
    out["machine"] = machine()
    write_json(args.json, out)


if __name__ == "__main__":
    main()

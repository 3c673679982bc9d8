"""Set-up per task: the CPU one stream costs from being opened to its first token, and the time to
first token of N streams opened at once (issue 16: within 2× of the raw-socket client's).

Each contender runs in its own process against `sse_server.py`'s `/hold/` path (the head, the
role delta and one token, then nothing until the client closes). A run opens N streams at once
on fresh connections (a burst: every stream starts in the same scheduler pass) and stops the
clock when every stream has its first token:

  CPU / task   the client process's CPU time (`time.process_time`; of it, in the kernel:
               `getrusage`'s system time) over the run ÷ N: request
               building, the connect, the task's set-up, the request written, the response head
               and the first read parsed, the first token handed to the consumer. Process CPU,
               not wall time: the machine is shared, and with every stream on one core the
               burst's TTFT is this cost × N plus what the scheduler and the kernel add.
  TTFT p50/p99 from the burst's start to each stream's first token, wall clock.

The streams are then cancelled (not measured) and the next run starts. Contenders
(`_contenders.py`): raw (a trio socket stream and a hand-written request, no HTTP parsing),
h11-task (the design's shape at its leanest: a nursery, a reader task, h11, a channel),
adapter (`OpenAIAdapter.submit`, one adapter, its connection limit at N). raw and h11-task
connect through `trio.open_tcp_stream` (happy eyeballs), as a trio client would, and the
target's ratio is taken against them; raw-direct and h11-task-direct are the same with the
adapter's own direct connect to an IP address (`_connect.open_tcp`), which shows what the
adapter adds over the design floor with the connect taken out of the comparison.

    python benchmarks/bench_setup.py [--quick] [--json out.json] [--streams N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    HERE,
    load_average,
    machine,
    percentile,
    run_child,
    summarize,
    upstream_process,
    write_json,
)

CONTENDERS = ("raw", "h11-task", "adapter", "raw-direct", "h11-task-direct")
PATH = "/hold/v1/chat/completions"
STREAMS = 1000


def child(kind: str, port: int, streams: int, runs: int) -> dict[str, Any]:
    import _contenders as c
    import trio

    body = c.chat_body(16)
    out: dict[str, Any] = {"runs": []}

    async def main() -> None:
        adapter: Any = None
        if kind == "adapter":
            adapter = await c.open_warm_adapter(port, "/hold", streams)

            async def one(i: int, on_text: Any) -> None:
                await c.adapter_stream(adapter, f"t-{i}", 16, on_text=on_text)
        else:
            c.DIRECT_CONNECT = kind.endswith("-direct")
            fn = c.raw_trio_stream if kind.startswith("raw") else c.h11_task_stream
            await fn(port, "/v1/chat/completions", c.chat_body(4), lambda text: None)

            async def one(i: int, on_text: Any) -> None:
                await fn(port, PATH, body, on_text)

        try:
            for _ in range(runs):
                out["runs"].append(await burst(one))
        finally:
            if adapter is not None:
                await adapter.__aexit__(None, None, None)

    async def burst(one: Any) -> dict[str, Any]:
        all_open = trio.Event()
        ttft: list[float] = []
        clock = time.perf_counter

        def probe() -> Any:
            seen = False

            def on_text(text: Any) -> None:
                nonlocal seen
                if not seen:
                    seen = True
                    ttft.append(clock() - t0)
                    if len(ttft) == streams:
                        all_open.set()

            return on_text

        probes = [probe() for _ in range(streams)]
        gc.collect()
        async with trio.open_nursery() as nursery:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0, c0 = clock(), time.process_time()
            for i in range(streams):
                nursery.start_soon(one, i, probes[i])
            await all_open.wait()
            cpu = time.process_time() - c0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            nursery.cancel_scope.cancel()
        return {
            "cpu_us_per_task": cpu / streams * 1e6,
            "sys_us_per_task": (r1.ru_stime - r0.ru_stime) / streams * 1e6,
            "ttft_ms": [percentile(ttft, 50) * 1e3, percentile(ttft, 99) * 1e3],
        }

    trio.run(main)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--streams", type=int, default=STREAMS, help="streams opened at once")
    parser.add_argument("--runs", type=int, help="bursts per contender")
    parser.add_argument("--only", nargs="*", choices=CONTENDERS)
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    if args.child:
        print(json.dumps(child(args.child, args.port, args.streams, runs)))
        return
    t0 = time.perf_counter()
    load_before = load_average()
    results: dict[str, Any] = {}
    with upstream_process() as port:
        for kind in args.only or CONTENDERS:
            common = [os.path.join(HERE, "bench_setup.py"), "--child", kind, "--port", str(port)]
            r = run_child([*common, "--streams", str(args.streams), "--runs", str(runs)])
            rs = r["runs"]
            results[kind] = {
                "cpu_us_per_task": summarize([x["cpu_us_per_task"] for x in rs]).as_dict(),
                "sys_us_per_task": summarize([x["sys_us_per_task"] for x in rs]).median,
                "ttft_p50_ms": summarize([x["ttft_ms"][0] for x in rs]).median,
                "ttft_p99_ms": summarize([x["ttft_ms"][1] for x in rs]).median,
            }
    print(
        f"Set-up per task: {args.streams:,} streams opened at once, fresh connections,"
        f" until every stream has its first token (medians of {runs} bursts)"
    )
    print(
        f"{'contender':<15} {'CPU µs/task':>12} {'spread':>7} {'of it kernel':>13}"
        f" {'TTFT p50':>9} {'p99':>8}"
    )
    for kind, r in results.items():
        cpu = r["cpu_us_per_task"]
        spread = 100.0 * (cpu["max"] - cpu["min"]) / cpu["median"]
        print(
            f"{kind:<15} {cpu['median']:>12,.0f} {spread:>6.0f}% {r['sys_us_per_task']:>11,.0f}µs"
            f" {r['ttft_p50_ms']:>7.0f}ms"
            f" {r['ttft_p99_ms']:>6.0f}ms"
        )
    out: dict[str, Any] = {"streams": args.streams, **results}
    if "adapter" in results and "raw" in results:
        a, raw = results["adapter"], results["raw"]
        out["ttft_vs_raw"] = ttft = a["ttft_p99_ms"] / raw["ttft_p99_ms"]
        out["cpu_vs_raw"] = a["cpu_us_per_task"]["median"] / raw["cpu_us_per_task"]["median"]
        line = (
            f"adapter ÷ raw: TTFT p99 {ttft:.2f}× (target ≤ 2×) {'met' if ttft <= 2 else 'MISSED'}"
        )
        line += f", CPU per task {out['cpu_vs_raw']:.2f}×"
        if "h11-task" in results:
            floor = results["h11-task"]
            out["cpu_vs_floor"] = (
                a["cpu_us_per_task"]["median"] / floor["cpu_us_per_task"]["median"]
            )
            line += f"; ÷ design floor: CPU per task {out['cpu_vs_floor']:.2f}×"
        print(line)
    if "adapter" in results and "h11-task-direct" in results:
        a_cpu = results["adapter"]["cpu_us_per_task"]["median"]
        fd = results["h11-task-direct"]["cpu_us_per_task"]["median"]
        out["cpu_vs_floor_direct"] = a_cpu / fd
        raw_direct = results.get("raw-direct")
        raw_text = f"raw {raw_direct['cpu_us_per_task']['median']:,.0f} µs, " if raw_direct else ""
        print(
            f"with the adapter's direct connect for all: {raw_text}design floor"
            f" {fd:,.0f} µs per task; adapter ÷ that floor {a_cpu / fd:.2f}× (its own set-up)"
        )
    print(
        f"load average {load_before} before, {load_average()} after; {time.perf_counter() - t0:.0f} s"
    )
    out["machine"] = machine()
    write_json(args.json, out)


if __name__ == "__main__":
    main()

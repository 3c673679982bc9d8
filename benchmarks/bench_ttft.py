"""Overhead on time to first token: oai_adapter vs raw httpx2 on a 1-token stream.

One process, one trio run, one upstream process; the two clients alternate request by request
on keep-alive connections, so both meet the same machine state. TTFT is from the call
(`adapter.submit` entered / `client.stream` called) to the consumer holding the first token's
text. The adapter's overhead is the difference of the medians (and of the p99s).
Target: overhead ≤ 0.2 ms.

    python benchmarks/bench_ttft.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import HERE, machine, percentile, run_child, summarize, upstream_process, write_json


def child(port: int, iterations: int) -> dict[str, list[float]]:
    import _contenders as c
    import trio

    from oai_adapter import OpenAIAdapter, TaskRequest, Token

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = c.chat_body(1)
    decode = c._floor_decoder.decode
    out: dict[str, list[float]] = {"adapter": [], "httpx2": []}

    async def adapter_ttft(adapter: Any, i: int) -> float:
        t0 = time.perf_counter()
        ttft = 0.0
        async with adapter.submit(
            TaskRequest(task_id=f"t-{i}", messages=c.MESSAGES, max_tokens=1)
        ) as events:
            async for ev in events:
                if type(ev) is Token and not ttft:
                    ttft = time.perf_counter() - t0
        return ttft

    async def httpx2_ttft(client: Any) -> float:
        t0 = time.perf_counter()
        ttft = 0.0
        rest = b""
        async with client.stream(
            "POST", url, content=body, headers={"content-type": "application/json"}
        ) as r:
            async for chunk in r.aiter_raw():
                lines = (rest + chunk if rest else chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if line[:7] == b"data: {" and not ttft:
                        choices = decode(line[6:]).choices
                        if choices and (d := choices[0].delta) is not None and d.content:
                            ttft = time.perf_counter() - t0
        return ttft

    async def main() -> None:
        async with OpenAIAdapter(c.adapter_config(port)) as adapter, c.floor_client() as client:
            for i in range(iterations + 50):
                a = await adapter_ttft(adapter, i)
                h = await httpx2_ttft(client)
                if i >= 50:  # warm-up
                    out["adapter"].append(a)
                    out["httpx2"].append(h)

    trio.run(main)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.port, args.iterations)))
        return
    iterations = 300 if args.quick else args.iterations
    rounds = 1 if args.quick else 3
    meds: dict[str, list[float]] = {"adapter": [], "httpx2": []}
    p99s: dict[str, list[float]] = {"adapter": [], "httpx2": []}
    with upstream_process() as port:
        for _ in range(rounds):
            r = run_child(
                [
                    os.path.join(HERE, "bench_ttft.py"),
                    "--child",
                    "--port",
                    str(port),
                    "--iterations",
                    str(iterations),
                ]
            )
            for k in meds:
                meds[k].append(percentile(r[k], 50) * 1e3)
                p99s[k].append(percentile(r[k], 99) * 1e3)
    out: dict[str, Any] = {"iterations": iterations, "rounds": rounds}
    print(
        f"TTFT on a 1-token stream: {iterations} requests each, alternating, keep-alive, {rounds} process(es)"
    )
    for k in meds:
        m, p = summarize(meds[k]), summarize(p99s[k])
        out[k] = {"p50_ms": m.as_dict(), "p99_ms": p.as_dict()}
        print(
            f"  {k:<8} p50 {m.median:.3f} ms (min {m.lo:.3f}, max {m.hi:.3f})   p99 {p.median:.3f} ms"
        )
    overhead = summarize(
        [a - h for a, h in zip(meds["adapter"], meds["httpx2"], strict=True)]
    ).median
    overhead99 = summarize(
        [a - h for a, h in zip(p99s["adapter"], p99s["httpx2"], strict=True)]
    ).median
    out["overhead_ms"], out["overhead_p99_ms"] = overhead, overhead99
    print(
        f"adapter overhead on TTFT: {overhead:.3f} ms at p50, {overhead99:.3f} ms at p99"
        f" (target ≤ 0.2 ms) {'met' if overhead <= 0.2 else 'MISSED'}"
    )
    out["machine"] = machine()
    write_json(args.json, out)


if __name__ == "__main__":
    main()

"""Per-token cost of the host: one long stream read through `AdapterHost.submit` vs through the
bare `OpenAIAdapter.submit`, same upstream, same process. Prints tokens/s of each and the ratio.

The host adds a driver task and one hand-over per batch (`_hosttask._Pipe`), not one per token;
this shows what that costs when the upstream sends the whole stream in 64 KiB writes.

    python benchmarks/bench_host.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import trio

from oai_adapter import AdapterConfig, AdapterHost, HostPolicy, OpenAIAdapter, TaskRequest
from oai_adapter.testing import FakeUpstream, Reply, Send, render_stream


async def consume(events: object) -> int:
    n = 0
    async for _ in events:  # type: ignore[attr-defined]
        n += 1
    return n


async def bench(tokens: int, runs: int) -> dict[str, float]:
    words = [f" w{i}" for i in range(tokens)]
    upstream = FakeUpstream(tokens=words)
    # The whole stream in large writes: the upstream costs next to nothing per token, so what is
    # measured is the client side (parse, map, hand over, iterate).
    frames = b"".join(s.data for s in render_stream("chat", words) if isinstance(s, Send))
    chunk = 64 * 1024
    whole = Reply(steps=[Send(frames[i : i + chunk]) for i in range(0, len(frames), chunk)])
    upstream.script(*[whole] * (2 * runs))
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        config = AdapterConfig(base_url=upstream.base_url, model=upstream.model)
        bare: list[float] = []
        hosted: list[float] = []
        async with (
            OpenAIAdapter(config) as adapter,
            AdapterHost(HostPolicy(probe_interval=600)) as host,
        ):
            await host.bind("p", "r0", config)
            for i in range(runs):
                t0 = time.perf_counter()
                async with adapter.submit(TaskRequest(task_id=f"a{i}", prompt="x")) as events:
                    await consume(events)
                bare.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                async with host.submit("p", TaskRequest(task_id=f"h{i}", prompt="x")) as events:
                    await consume(events)
                hosted.append(time.perf_counter() - t0)
        nursery.cancel_scope.cancel()
    b, h = statistics.median(bare), statistics.median(hosted)
    return {
        "tokens": tokens,
        "bare_tokens_per_s": tokens / b,
        "host_tokens_per_s": tokens / h,
        "host_over_bare_time": h / b,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = trio.run(bench, 5_000 if args.quick else 50_000, 3 if args.quick else 7)
    print(
        f"{result['tokens']} tokens: bare adapter {result['bare_tokens_per_s']:,.0f} tok/s, "
        f"through the host {result['host_tokens_per_s']:,.0f} tok/s "
        f"(host time / bare time = {result['host_over_bare_time']:.2f})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()

"""The decode-step regime: one token per stream per step, each its own network read.

Batching inference servers (vLLM, SGLang, llama.cpp with several slots) emit one decode step at
a time: every step writes one token to every running stream, each its own small write, tens of
times a second. Then every token costs a whole network read, a reader wakeup and a consumer
wakeup, and that per-read cost is what decides how many streams one orchestrator core carries.
The bulk benchmarks (`bench_single`, `bench_concurrency`) are the best case; this is the regime
users see.

The upstream (`sse_server.py`'s `/paced/` path) runs in its own process pinned to one CPU; every
`step` ms one ticker writes one token event to every open stream, as one chunk of a chunked
body, whose text is the server's `time.monotonic()` at that write. Each contender runs in its
own process pinned to another CPU, so delivery latency (the consumer holding the token − the
server's write, both on the system-wide CLOCK_MONOTONIC) and CPU time are its own:

  raw       trio socket streams, the texts found in the bytes, no HTTP parsing
  h11       trio streams + h11 + the floor's line split and msgspec decode, no pool
  h11-task  the same in the design's shape at its leanest: a nursery per stream, a reader task
            with one moving-deadline scope, one batch per read over a bounded memory channel —
            the floor of this design
  floor     httpx2 streaming + the same split and decode (`_contenders.floor_stream`)
  adapter   `OpenAIAdapter.submit`, `async for ev in events`
  sdk       `openai.AsyncOpenAI` on asyncio (httpx2 underneath)

Each opens C streams at once, waits until every stream has its first token (plus a short
warm-up), then measures a fixed window: CPU µs per token (process CPU time ÷ tokens delivered),
share of a core, delivery latency p50/p99, and tokens/s against the offered C ÷ step. Then it
closes every stream. Configurations: C = 128 and 256 at a 25 ms step, C = 1,000 at 100 ms. Last,
the largest C the adapter carries at a 25 ms step (p99 delivery under one step and ≥ 95 % of
the offered tokens delivered), found by doubling and bisecting.

    python benchmarks/bench_paced.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    HERE,
    load_average,
    machine,
    percentile,
    pin_to,
    ratio,
    run_child,
    split_cpus,
    upstream_process,
    write_json,
)

CONTENDERS = ("raw", "h11", "h11-task", "floor", "adapter", "sdk")
#: (streams, step ms): 5k, 10k and 10k offered tokens/s; `--quick` runs the first and last.
CONFIGS = ((128, 25.0), (256, 25.0), (1000, 100.0))
QUICK_CONFIGS = (CONFIGS[0], CONFIGS[-1])
PATH = "/paced/v1/chat/completions"
#: Tokens each stream is asked for: more than any run lasts (streams are closed by the client).
MAX_TOKENS = 1_000_000
#: Seconds a contender may take to get the first token of every stream before the window opens
#: anyway (a saturated client may never get there).
SETUP_CAP = 10.0
#: Seconds a contender may overrun its planned window before its watchdog closes it.
OVERRUN = 5.0
#: Seconds a contender's process may take beyond its setup cap, warm-up and window (it is then
#: killed and reported as not keeping up).
RUN_SLACK = 30.0


class Window:
    """Per-token probe: first-token times while streams open, then latencies in the window."""

    def __init__(self, streams: int, on_all_open: Callable[[], None]) -> None:
        self.streams = streams
        self.on_all_open = on_all_open
        self.opened = 0
        self.t0 = time.monotonic()
        self.first: list[float] = []  # seconds from the start to each stream's first token
        self.active = False
        self.lat: list[float] = []
        self.cpu0 = self.cpu1 = self.wall0 = self.wall1 = 0.0

    def probe(self) -> Callable[[Any], None]:
        seen = False
        monotonic = time.monotonic
        lat = self.lat

        def on_text(text: Any) -> None:
            nonlocal seen
            now = monotonic()
            if self.active:
                lat.append(now - float(text))
            if not seen:
                seen = True
                self.first.append(now - self.t0)
                self.opened += 1
                if self.opened == self.streams:
                    self.on_all_open()

        return on_text

    def watchdog(self, after: float, step_ms: float) -> None:
        """Bound this process's run: `after` seconds from now, a client whose event loop is too
        far behind to close its window on time gets it closed here (the figures then cover a
        longer window, which is still a valid measurement), prints them and exits."""

        def fire(signum: int, frame: Any) -> None:
            if self.active:
                self.end()
            elif not self.wall0:
                self.begin()
                self.end()
            print(json.dumps({**self.result(step_ms), "overran": True}), flush=True)
            os._exit(0)

        signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, after)

    def begin(self) -> None:
        self.wall0, self.cpu0 = time.monotonic(), time.process_time()
        self.active = True

    def end(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)  # the watchdog's job is done
        self.active = False
        self.wall1, self.cpu1 = time.monotonic(), time.process_time()

    def result(self, step_ms: float) -> dict[str, Any]:
        tokens = len(self.lat)
        wall, cpu = self.wall1 - self.wall0, self.cpu1 - self.cpu0
        return {
            "tokens": tokens,
            "opened": self.opened,
            "cpu_us_per_token": cpu / tokens * 1e6 if tokens else float("nan"),
            "core_share": cpu / wall if wall else float("nan"),
            "tokens_per_s": tokens / wall if wall else 0.0,
            "offered_per_s": self.streams / (step_ms / 1000.0),
            "lat_p50_ms": _ms(self.lat, 50),
            "lat_p99_ms": _ms(self.lat, 99),
            "first_p50_ms": _ms(self.first, 50),
            "first_p99_ms": _ms(self.first, 99),
        }


def _ms(values: list[float], p: float) -> float:
    """The p-th percentile of seconds, in ms; NaN for none (a client that delivered nothing)."""
    return percentile(values, p) * 1e3 if values else float("nan")


def child(kind: str, port: int, streams: int, step_ms: float, warm: float, window: float) -> Any:
    import _contenders as c

    body = c.chat_body(MAX_TOKENS, pace_ms=step_ms)
    bound = SETUP_CAP + warm + window + OVERRUN
    if kind == "sdk":
        import asyncio

        async def sdk_main() -> dict[str, Any]:
            all_open = asyncio.Event()
            client = c.sdk_client(port, "/paced", max_connections=streams)
            async with client:
                w = Window(streams, all_open.set)
                w.watchdog(bound, step_ms)
                w.t0 = time.monotonic()
                _streams = [  # referenced: asyncio keeps only weak references to tasks
                    asyncio.create_task(
                        c.sdk_stream(
                            client, MAX_TOKENS, extra={"pace_ms": step_ms}, on_text=w.probe()
                        )
                    )
                    for _ in range(streams)
                ]
                try:
                    await asyncio.wait_for(all_open.wait(), SETUP_CAP)
                except TimeoutError:
                    pass
                await asyncio.sleep(warm)
                w.begin()
                await asyncio.sleep(window)
                w.end()
                # The figures are taken. Closing 1,000 SDK streams can take minutes on a loaded
                # machine (each close walks httpcore2's pool), so this process ends here.
                print(json.dumps(w.result(step_ms)), flush=True)
                os._exit(0)
            return w.result(step_ms)

        return asyncio.run(sdk_main())

    import trio

    async def trio_main() -> dict[str, Any]:
        all_open = trio.Event()
        w = Window(streams, all_open.set)
        w.watchdog(bound, step_ms)
        if kind == "adapter":
            from oai_adapter import OpenAIAdapter

            adapter = OpenAIAdapter(c.adapter_config(port, "/paced", max_connections=streams))
            await adapter.__aenter__()

            async def one(i: int) -> None:
                await c.adapter_stream(
                    adapter, f"t-{i}", MAX_TOKENS, extra={"pace_ms": step_ms}, on_text=w.probe()
                )
        elif kind == "floor":
            client = c.floor_client(streams)
            url = f"http://127.0.0.1:{port}{PATH}"

            async def one(i: int) -> None:
                await c.floor_stream(client, url, body, on_text=w.probe())
        else:
            stream_fn = {"raw": c.raw_trio_stream, "h11": c.h11_stream}.get(kind, c.h11_task_stream)

            async def one(i: int) -> None:
                await stream_fn(port, PATH, body, w.probe())

        try:
            w.t0 = time.monotonic()  # first-token times count from here, not from the imports
            async with trio.open_nursery() as nursery:
                for i in range(streams):
                    nursery.start_soon(one, i)
                with trio.move_on_after(SETUP_CAP):
                    await all_open.wait()
                await trio.sleep(warm)
                w.begin()
                await trio.sleep(window)
                w.end()
                nursery.cancel_scope.cancel()
        finally:
            if kind == "adapter":
                await adapter.__aexit__(None, None, None)
            elif kind == "floor":
                await client.aclose()
        return w.result(step_ms)

    return trio.run(trio_main)


def run_one(
    kind: str, port: int, cpu: int | None, streams: int, step_ms: float, warm: float, window: float
) -> dict[str, Any]:
    args = [os.path.join(HERE, "bench_paced.py"), "--child", kind, "--port", str(port)]
    args += ["--streams", str(streams), "--step", str(step_ms)]
    args += ["--warm", str(warm), "--window", str(window)]
    if cpu is not None:
        args += ["--cpu", str(cpu)]
    try:
        return run_child(args, timeout=SETUP_CAP + warm + window + OVERRUN + RUN_SLACK)
    except subprocess.TimeoutExpired:
        nan = float("nan")
        return {
            "tokens": 0,
            "opened": 0,
            "timed_out": True,
            **dict.fromkeys(("cpu_us_per_token", "core_share", "lat_p50_ms", "lat_p99_ms"), nan),
            **dict.fromkeys(("first_p50_ms", "first_p99_ms"), nan),
            "tokens_per_s": 0.0,
            "offered_per_s": streams / (step_ms / 1000.0),
        }


def carries(r: dict[str, Any], step_ms: float) -> bool:
    """Real time: p99 delivery under one step, and (nearly) every offered token delivered."""
    return bool(r["lat_p99_ms"] < step_ms and r["tokens_per_s"] >= 0.95 * r["offered_per_s"])


def capacity(
    port: int, cpu: int | None, step_ms: float, warm: float, window: float, start: int, top: int
) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
    """The largest C (to ~10 %) the adapter carries at `step_ms`: double from `start` until it
    does not, then bisect. Returns (C, every trial)."""
    trials: list[tuple[int, dict[str, Any]]] = []

    def ok(n: int) -> bool:
        r = run_one("adapter", port, cpu, n, step_ms, warm, window)
        trials.append((n, r))
        return carries(r, step_ms)

    lo, hi = 0, 0
    n = start
    while n <= top:
        if ok(n):
            lo, n = n, n * 2
        else:
            hi = n
            break
    if hi == 0:
        return lo, trials
    if lo == 0:  # even `start` is too many: bisect below it
        lo = start // 8
    while hi - lo > max(8, lo // 10):
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, no capacity search")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--only", nargs="*", choices=CONTENDERS, help="run only these contenders")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--step", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pin_to(args.cpu)
        r = child(args.child, args.port, args.streams, args.step, args.warm, args.window)
        print(json.dumps(r))
        return

    warm, window = (0.2, 0.5) if args.quick else (0.5, 2.5)
    contenders = args.only or CONTENDERS
    server_cpu, client_cpu = split_cpus()
    load_before = load_average()
    t0 = time.perf_counter()
    out: dict[str, Any] = {"configs": {}, "load_before": load_before}
    with upstream_process(server_cpu) as port:
        for streams, step in QUICK_CONFIGS if args.quick else CONFIGS:
            key = f"{streams}@{step:g}ms"
            res = out["configs"][key] = {}
            print(
                f"\nC = {streams:,} streams, one token each every {step:g} ms"
                f" ({streams / step * 1000:,.0f} tokens/s offered); window {window:g} s"
            )
            print(
                f"{'contender':<9} {'CPU µs/tok':>10} {'core':>6} {'tok/s':>8}"
                f" {'lat p50':>8} {'p99':>8} {'1st tok p50':>11} {'p99':>7} {'run':>5}"
            )
            for kind in contenders:
                t1 = time.perf_counter()
                r = res[kind] = run_one(kind, port, client_cpu, streams, step, warm, window)
                r["elapsed_s"] = time.perf_counter() - t1
                late = "" if r["opened"] == streams else f"  (only {r['opened']} opened)"
                if r.get("overran"):
                    late += "  (window overran: the client's loop was behind)"
                if r.get("timed_out"):
                    late = "  (timed out: did not keep up)"
                print(
                    f"{kind:<9} {r['cpu_us_per_token']:>10.1f} {r['core_share']:>6.2f}"
                    f" {r['tokens_per_s']:>8,.0f} {r['lat_p50_ms']:>6.1f}ms {r['lat_p99_ms']:>6.1f}ms"
                    f" {r['first_p50_ms']:>9.0f}ms {r['first_p99_ms']:>5.0f}ms"
                    f" {r['elapsed_s']:>4.0f}s{late}",
                    flush=True,
                )
            if "adapter" in res:
                a = res["adapter"]["cpu_us_per_token"]
                parts = []
                for other, name in (("h11-task", "design floor"), ("floor", "httpx2 floor")):
                    if other in res:
                        parts.append(f"{ratio(a, res[other]['cpu_us_per_token']):.2f}× {name}")
                if "sdk" in res:
                    parts.append(f"{ratio(a, res['sdk']['cpu_us_per_token']):.2f}× SDK")
                r = res["adapter"]
                print(
                    f"adapter CPU per token = {', '.join(parts)};"
                    f" p99 delivery {r['lat_p99_ms']:.1f} ms"
                    f" ({'within' if r['lat_p99_ms'] <= step else 'over'} one step)"
                )
        if not args.quick and "adapter" in contenders:
            step = 25.0
            cap, trials = capacity(port, client_cpu, step, 0.3, 1.5, start=128, top=2048)
            out["capacity"] = {"step_ms": step, "streams": cap, "trials": trials}
            print(f"\nlargest C the adapter carries on one core at a {step:g} ms step: {cap:,}")
            for n, r in trials:
                print(
                    f"  C = {n:>5,}: {r['core_share']:.2f} of a core,"
                    f" p99 {r['lat_p99_ms']:.1f} ms, {r['tokens_per_s']:,.0f}"
                    f" of {r['offered_per_s']:,.0f} tokens/s"
                    f" {'carried' if carries(r, step) else 'not carried'}"
                )
    out["load_after"] = load_average()
    print(
        f"\nload average before {load_before}, after {out['load_after']}"
        f" (2-core machine; compare contenders within this run); {time.perf_counter() - t0:.0f} s;"
        f" server on CPU {server_cpu}, clients on CPU {client_cpu}"
    )
    out["machine"] = machine()
    write_json(args.json, out)


if __name__ == "__main__":
    main()

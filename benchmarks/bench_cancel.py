"""Cancel: from `cancel()` returning to the consumer reading `End(cancelled)`, and to the
upstream seeing its connection closed.

Three cases, each repeated, against `close_server.py` in its own process:
  waiting   the upstream drips a token a millisecond; the consumer waits on `async for`; another
            task calls `adapter.cancel(task_id)` at a random moment 3–15 ms into the stream.
  full      the upstream sends a 10,000-token body at once; the consumer reads `Started`, then
            stops reading until the reader is blocked on a full channel; then cancels and reads.
  raw full  the reference for "upstream closed": a bare trio socket in the same state as `full`
            (the request sent, ~1 MB read, the rest left unread), closed at a known moment —
            what this measuring server takes to notice a close, with no client work before it.
The upstream records when each connection closed (`time.monotonic()`, system-wide), keyed by the
task's `X-Correlation-Id`; the client records when `cancel()` returned, on the same clock.
The upstream is the instrument here, so it is `close_server.py` and not the other benchmarks'
`sse_server.py` (same bytes, same paths for these cases): asyncio learns of a reset from a failed
`recv` and reports it a loop pass later, so `sse_server.py` noticed even the bare socket's close
0.22–0.30 ms p50 / 0.39–0.63 ms p99 after it (one run 4.9 ms) — above the 0.3 ms target,
which it therefore could not show. `close_server.py` (plain `select.epoll`, EPOLLRDHUP, the close recorded before any other
work in the loop pass) is this benchmark's floor: the `raw full` row, whose "upstream closed"
includes the client's own close call (freeing the ~1 MB unread, before the reset is sent).
The client pauses `PAUSE` between tasks so that the upstream is idle when a close arrives:
without it the next task's request (the upstream writes a 2 MB body for it) can land just
before the close, and what was measured was the server's work, not the close (with
`sse_server.py`: p99 ~2.5 ms for the adapter, as for any client that sends the next request at
once).
The upstream and the adapter run pinned to different CPUs (as in `bench_paced`), which is how
an upstream on its own machine sees a close: the reset leaves inside the adapter's `close()`
call (now inside `cancel()` itself), and nothing on the client's side can delay it. Unpinned
(`--unpinned`), on this 2-core machine the kernel wakes the upstream on the CPU of the process
whose close woke it, and there it waits until the adapter blocks: in `full` the adapter still
delivers `End` and frees ~10,000 buffered events after its close, so the upstream saw it
~0.44 ms after the socket's `close()` returned (a probe timing that call; pinned ~0.03 ms;
upstream closed p50 0.48–0.55 ms unpinned, 0.02 ms pinned). `raw full` sleeps at once after its
close and does not show it. Pinned, the upstream waits instead whenever another process holds
its CPU (a busy machine shows that in p99).
Targets (issue 16): cancel → End p99 ≤ 0.5 ms, upstream closed p99 ≤ 0.3 ms.

    python benchmarks/bench_cancel.py [--quick] [--unpinned] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    HERE,
    load_average,
    machine,
    percentile,
    pin_to,
    run_child,
    split_cpus,
    upstream_process,
    write_json,
)

#: Between tasks: the upstream's event loop is idle when the next close arrives (see above).
PAUSE = 0.005


def child(port: int, iterations: int) -> dict[str, Any]:
    import _contenders as c
    import httpx2
    import trio

    from oai_adapter import End, OpenAIAdapter, Started, TaskRequest

    rng = random.Random(9)
    results: dict[str, dict[str, list[float]]] = {}

    async def one(
        adapter: Any, case: str, i: int, rec: dict[str, list[float]], cancels: dict[str, float]
    ) -> None:
        tid = f"{case}-{i}"
        req = TaskRequest(
            task_id=tid,
            correlation_id=tid,
            messages=c.MESSAGES,
            max_tokens=10_000,
            extra={"pace_ms": 1.0} if case == "waiting" else None,
        )
        cancelled_at = 0.0
        async with adapter.submit(req) as events, trio.open_nursery() as nursery:
            if case == "waiting":

                async def canceller() -> None:
                    nonlocal cancelled_at
                    await trio.sleep(rng.uniform(0.003, 0.015))
                    assert adapter.cancel(tid)
                    cancelled_at = time.monotonic()

                async for ev in events:
                    if type(ev) is Started:
                        nursery.start_soon(canceller)
                    elif type(ev) is End:
                        rec["end"].append(time.monotonic() - cancelled_at)
                        assert ev.reason == "cancelled", ev
            else:
                first = await events.__anext__()
                assert type(first) is Started, first
                await trio.sleep(0.02)  # the reader fills the channel and blocks
                assert adapter.cancel(tid)
                cancelled_at = time.monotonic()
                ev = await events.__anext__()
                rec["end"].append(time.monotonic() - cancelled_at)
                assert type(ev) is End, ev
                assert ev.reason == "cancelled", ev
        cancels[tid] = cancelled_at
        await trio.sleep(PAUSE)

    async def raw_one(i: int, rec: dict[str, list[float]], cancels: dict[str, float]) -> None:
        tid = f"raw-{i}"
        request = c.raw_request(port, c.chat_body(10_000), "/bulk/v1/chat/completions")
        request = request.replace(b"\r\n\r\n", f"\r\nx-correlation-id: {tid}\r\n\r\n".encode(), 1)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request)
        got = 0
        while got < 1 << 20:
            got += len(await stream.receive_some(1 << 16))
        await trio.sleep(0.02)
        closed_at = time.monotonic()
        await stream.aclose()
        rec["end"].append(time.monotonic() - closed_at)  # the close itself, in the client
        cancels[tid] = closed_at
        await trio.sleep(PAUSE)

    async def main() -> None:
        async with httpx2.AsyncClient() as stats_client:
            for case, prefix in (("waiting", "/drip"), ("full", "/bulk"), ("raw full", "")):
                rec: dict[str, list[float]] = {"end": [], "closed": []}
                cancels: dict[str, float] = {}
                if case == "raw full":
                    for i in range(iterations + 3):
                        await raw_one(i, rec, cancels)
                else:
                    async with OpenAIAdapter(c.adapter_config(port, prefix)) as adapter:
                        for i in range(iterations + 3):
                            await one(adapter, case, i, rec, cancels)
                await trio.sleep(0.05)
                stats = (await stats_client.get(f"http://127.0.0.1:{port}/stats/reset")).json()
                closes = stats["closes"]
                missing = [tid for tid in cancels if tid not in closes]
                if missing:
                    raise RuntimeError(
                        f"the upstream saw no close for {missing} of {len(cancels)}; {stats}"
                    )
                for tid, at in cancels.items():
                    rec["closed"].append(closes[tid] - at)
                rec["end"] = rec["end"][3:]  # warm-up
                rec["closed"] = rec["closed"][3:]
                results[case] = rec

    trio.run(main)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument(
        "--unpinned",
        action="store_true",
        help="let the kernel place the upstream and the adapter (default: different CPUs)",
    )
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pin_to(args.cpu)
        print(json.dumps(child(args.port, args.iterations)))
        return
    iterations = 40 if args.quick else args.iterations
    # Pinned apart by default: an upstream on its own machine (see the module header).
    server_cpu, client_cpu = (None, None) if args.unpinned else split_cpus()
    with upstream_process(server_cpu, script="close_server.py") as port:
        child_args = [os.path.join(HERE, "bench_cancel.py"), "--child", "--port", str(port)]
        child_args += ["--iterations", str(iterations)]
        if client_cpu is not None:
            child_args += ["--cpu", str(client_cpu)]
        r = run_child(child_args)
    out: dict[str, Any] = {"iterations": iterations, "server_cpu": server_cpu}
    out["client_cpu"] = client_cpu
    where = "not pinned" if server_cpu is None else f"on CPU {server_cpu}, adapter on {client_cpu}"
    print(
        f"Cancel: {iterations} cancels per case, adapter in its own process, upstream in another"
        f" ({where})"
    )
    print(f"{'case':<8} {'→ End p50':>10} {'p99':>9} {'→ upstream closed p50':>22} {'p99':>9}")
    print(
        "(raw full: '→ End' is the socket's close call itself; '→ upstream closed' from before it)"
    )
    for case, rec in r.items():
        e50, e99 = percentile(rec["end"], 50) * 1e3, percentile(rec["end"], 99) * 1e3
        c50, c99 = percentile(rec["closed"], 50) * 1e3, percentile(rec["closed"], 99) * 1e3
        out[case] = {"end_ms": [e50, e99], "closed_ms": [c50, c99]}
        print(f"{case:<8} {e50:>8.3f}ms {e99:>7.3f}ms {c50:>20.3f}ms {c99:>7.3f}ms")
    adapter_cases = [k for k in r if k != "raw full"]
    worst_end = max(out[k]["end_ms"][1] for k in adapter_cases)
    worst_closed = max(out[k]["closed_ms"][1] for k in adapter_cases)
    out["end_p99_ms"], out["closed_p99_ms"] = worst_end, worst_closed
    print(
        f"cancel → End p99 {worst_end:.3f} ms (target ≤ 0.5 ms) {'met' if worst_end <= 0.5 else 'MISSED'};"
        f" upstream closed p99 {worst_closed:.3f} ms (target ≤ 0.3 ms) {'met' if worst_closed <= 0.3 else 'MISSED'}"
    )
    raw = out["raw full"]["closed_ms"][1]
    print(
        f"upstream closed p99, adapter ÷ raw socket (full): {out['full']['closed_ms'][1] / raw:.2f}×"
        f" (this server notices a bare socket's close after {raw:.3f} ms p99)"
    )
    print(f"load average {load_average()}")
    out["machine"] = machine()
    write_json(args.json, out)


if __name__ == "__main__":
    main()

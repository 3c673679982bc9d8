"""Memory per open stream, and where it goes: 1,000 streams open at once, each client alone.

Each contender runs in its own process against `sse_server.py`'s `/hold/` path (the head, the
role delta and one token, then nothing until the client closes), opens N streams, waits until
every stream has its first token, and compares the process with itself before (one warm-up
stream done, `gc.collect()`):

  RSS            VmRSS growth ÷ N: what the operating system sees
  pymalloc       CPython's small-object allocator (objects ≤ 512 B): its 1 MiB arenas, split
                 into blocks in use, free blocks in partly used pools, and free pools (from
                 `sys._debugmallocstats()`)
  malloc         glibc's heap (objects > 512 B, buffers, C libraries): in use and free
                 (`mallinfo2()`; free is fragmentation the process keeps)
  other          RSS − the two: thread stacks, page rounding, the code and data pages touched
  objects        the `gc`-tracked objects by type (count, `sys.getsizeof`) per stream; a
                 coroutine's size includes its frame (CPython 3.11 embeds frames)
  traced         tracemalloc's view (in its own process: tracing inflates RSS) by the line that
                 allocated, per stream
  peak           tracemalloc's peak while the streams opened, per stream: what was alive at
                 once at the worst moment (all of them connecting and sending). pymalloc gives
                 an arena back only when it is wholly empty, so RSS follows the peak more than
                 what stays in use: what is freed after it is the "free" column
  stacks         the trio tasks alive per stream and their coroutine stacks (frame by frame,
                 `sys.getsizeof`): what a waiting stream keeps on its stacks

Contenders (`_contenders.py`): raw (trio socket streams, no HTTP parsing), h11-task (the
design's shape at its leanest), floor (httpx2 streaming), adapter. Target: the adapter
≤ 20 KiB per open stream.

    python benchmarks/bench_memory.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import tempfile
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import HERE, load_average, machine, rss_kib, run_child, upstream_process, write_json

CONTENDERS = ("raw", "h11-task", "floor", "adapter")
PATH = "/hold/v1/chat/completions"
STREAMS = 1000


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def malloc_state() -> dict[str, int]:
    """glibc's heap: bytes in use and free (main arena + mmapped chunks); {} elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"in_use": m.uordblks + m.hblkhd, "free": m.fordblks, "total": m.arena + m.hblkhd}


def pymalloc_state() -> dict[str, int]:
    """CPython's small-object allocator, parsed from `sys._debugmallocstats()` (C stderr)."""
    with tempfile.TemporaryFile(mode="w+") as f:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read()
    out: dict[str, int] = {}
    wanted = {
        "bytes in allocated blocks": "in_use",
        "bytes in available blocks": "free_blocks",
        "unused pools": "free_pools",
        "bytes lost to pool headers": "headers",
        "bytes lost to quantization": "quantization",
        "bytes lost to arena alignment": "alignment",
    }
    for line in text.splitlines():
        if "=" not in line:
            continue
        label, value = line.rsplit("=", 1)
        if "bytes/arena" in label:
            out["arenas"] = int(value.replace(",", ""))
        for key, name in wanted.items():
            if key in label:
                out[name] = int(value.replace(",", ""))
    return out


def census() -> tuple[Counter[str], Counter[str]]:
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return counts, sizes


def task_stacks(streams: int) -> list[tuple[float, list[tuple[str, int]]]]:
    """The coroutine stacks of the trio tasks alive now, grouped by shape: (tasks per stream,
    [(frame, bytes), …] outermost first), for the shapes with at least one task per 2 streams."""
    import trio

    shapes: Counter[tuple[str, ...]] = Counter()
    frames_of: dict[tuple[str, ...], list[tuple[str, int]]] = {}
    root = trio.lowlevel.current_root_task()
    assert root is not None  # called inside trio.run
    todo = [root]
    while todo:
        task = todo.pop()
        todo.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
        frames: list[tuple[str, int]] = []
        coro: Any = task.coro
        while coro is not None:
            code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
            frames.append((code.co_qualname if code else type(coro).__name__, sys.getsizeof(coro)))
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        shape = tuple(name for name, _ in frames)
        shapes[shape] += 1
        frames_of[shape] = frames
    return [(n / streams, frames_of[s]) for s, n in shapes.most_common() if n * 2 >= streams]


def state() -> dict[str, Any]:
    gc.collect()
    return {"rss": rss_kib() * 1024, "pymalloc": pymalloc_state(), "malloc": malloc_state()}


def child(kind: str, port: int, streams: int, trace: bool) -> dict[str, Any]:
    import _contenders as c
    import trio

    body = c.chat_body(16)
    out: dict[str, Any] = {}

    async def main() -> None:
        all_open = trio.Event()
        opened = 0

        def probe() -> Any:
            seen = False

            def on_text(text: Any) -> None:
                nonlocal seen, opened
                if not seen:
                    seen = True
                    opened += 1
                    if opened == streams:
                        all_open.set()

            return on_text

        warm_body = c.chat_body(4)
        adapter: Any = None
        client: Any = None
        if kind == "adapter":
            adapter = await c.open_warm_adapter(port, "/hold", streams)

            async def one(i: int) -> None:
                await c.adapter_stream(adapter, f"t-{i}", 16, on_text=probe())
        elif kind == "floor":
            client = c.floor_client(streams)
            await c.floor_stream(client, f"http://127.0.0.1:{port}/v1/chat/completions", warm_body)
            url = f"http://127.0.0.1:{port}{PATH}"

            async def one(i: int) -> None:
                await c.floor_stream(client, url, body, on_text=probe())
        else:
            fn = c.raw_trio_stream if kind == "raw" else c.h11_task_stream
            await fn(port, "/v1/chat/completions", warm_body, lambda text: None)

            async def one(i: int) -> None:
                await fn(port, PATH, body, probe())

        counts0, sizes0 = census()
        before = state()
        if trace:  # after the census: what measures is not measured
            import tracemalloc

            tracemalloc.start(1)
            snap0 = tracemalloc.take_snapshot()
            traced0 = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        try:
            async with trio.open_nursery() as nursery:
                for i in range(streams):
                    nursery.start_soon(one, i)
                await all_open.wait()
                after = state()
                if trace:
                    out["traced_peak_per_stream"] = (
                        tracemalloc.get_traced_memory()[1] - traced0
                    ) / streams
                    snap1 = tracemalloc.take_snapshot()
                    tracemalloc.stop()
                    by_line = snap1.compare_to(snap0, "lineno")
                    out["traced_per_stream"] = sum(s.size_diff for s in by_line) / streams
                    out["trace_lines"] = [
                        (_short(str(s.traceback[0])), s.size_diff / streams, s.count_diff / streams)
                        for s in sorted(by_line, key=lambda s: -s.size_diff)[:20]
                    ]
                counts1, sizes1 = census()
                out["stacks"] = task_stacks(streams)
                nursery.cancel_scope.cancel()
        finally:
            if adapter is not None:
                await adapter.__aexit__(None, None, None)
            if client is not None:
                await client.aclose()
        out["rss"] = (after["rss"] - before["rss"]) / streams
        pm0, pm1 = before["pymalloc"], after["pymalloc"]
        out["pymalloc"] = {k: (pm1.get(k, 0) - pm0.get(k, 0)) / streams for k in pm1}
        m0, m1 = before["malloc"], after["malloc"]
        out["malloc"] = {k: (m1.get(k, 0) - m0.get(k, 0)) / streams for k in m1}
        growth = Counter(sizes1)
        growth.subtract(sizes0)
        out["objects"] = [
            (name, (counts1[name] - counts0[name]) / streams, size / streams)
            for name, size in growth.most_common(12)
            if size > 0
        ]

    trio.run(main)
    return out


def _short(where: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--streams", type=int, help="streams open at once")
    parser.add_argument("--only", nargs="*", choices=CONTENDERS)
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    streams = args.streams or (300 if args.quick else STREAMS)
    if args.child:
        print(json.dumps(child(args.child, args.port, streams, args.trace)))
        return
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    with upstream_process() as port:
        for kind in args.only or CONTENDERS:
            common = [os.path.join(HERE, "bench_memory.py"), "--child", kind, "--port", str(port)]
            common += ["--streams", str(streams)]
            r = run_child(common)
            t = run_child([*common, "--trace"])
            r["traced_per_stream"], r["trace_lines"] = t["traced_per_stream"], t["trace_lines"]
            r["traced_peak_per_stream"] = t["traced_peak_per_stream"]
            results[kind] = r
    print(f"Memory per open stream, {streams:,} streams open at once (bytes per stream)")
    print(
        f"{'contender':<9} {'RSS':>7} {'pymalloc':>9} {'in use':>7} {'free':>6}"
        f" {'malloc':>7} {'in use':>7} {'free':>6} {'other':>7} {'traced':>7} {'peak':>7}"
    )
    for kind, r in results.items():
        pm, m = r["pymalloc"], r["malloc"]
        free_pm = pm.get("free_blocks", 0) + pm.get("free_pools", 0)
        other = r["rss"] - pm.get("arenas", 0) - m.get("total", 0)
        r["other"] = other
        print(
            f"{kind:<9} {r['rss']:>7,.0f} {pm.get('arenas', 0):>9,.0f} {pm.get('in_use', 0):>7,.0f}"
            f" {free_pm:>6,.0f} {m.get('total', 0):>7,.0f} {m.get('in_use', 0):>7,.0f}"
            f" {m.get('free', 0):>6,.0f} {other:>7,.0f} {r['traced_per_stream']:>7,.0f}"
            f" {r['traced_peak_per_stream']:>7,.0f}"
        )
    for kind, r in results.items():
        print(f"\n{kind}: gc-tracked objects per stream (count, bytes by sys.getsizeof)")
        for name, count, size in r["objects"]:
            print(f"  {size:>7,.0f} B  {count:>5.1f} × {name}")
        print(f"{kind}: trio tasks per stream, their coroutine stacks (outermost first)")
        for per_stream, frames in r["stacks"]:
            total = sum(size for _, size in frames)
            print(f"  {per_stream:.1f} × {len(frames)} frames, {total:,} B:")
            print("    " + " → ".join(f"{name} {size}" for name, size in frames))
        print(f"{kind}: allocations per stream by line (tracemalloc)")
        for where, size, count in r["trace_lines"]:
            print(f"  {size:>7,.0f} B  {count:>5.1f} blocks  {where}")
    rss = results.get("adapter", {}).get("rss")
    if rss is not None:
        kib = rss / 1024
        print(
            f"\nadapter: {kib:.1f} KiB per open stream (target ≤ 20 KiB)"
            f" {'met' if kib <= 20 else 'MISSED'}"
        )
    print(f"load average {load_average()}; {time.perf_counter() - t0:.0f} s")
    write_json(args.json, {"streams": streams, **results, "machine": machine()})


if __name__ == "__main__":
    main()

"""`just bench`: run every benchmark program, then print one summary table with the targets.

Each program runs in its own process (and starts its contenders in their own processes where
memory is measured); their full output is shown as they finish, then the summary. `--quick`
is passed through (a smoke run of a minute or so); the full run stays under ~10 minutes on
2 cores.

    python benchmarks/run_all.py [--quick] [--json summary.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import machine  # noqa: E402

PROGRAMS = (
    "bench_paced",
    "micro_stages",
    "bench_upstream",
    "bench_single",
    "bench_concurrency",
    "bench_memory",
    "bench_cancel",
    "bench_ttft",
    "bench_setup",
    "bench_end",
    "bench_import",
    "bench_h2",
)


def run(name: str, quick: bool, tmp: str) -> dict[str, Any]:
    path = os.path.join(tmp, f"{name}.json")
    args = [sys.executable, os.path.join(HERE, f"{name}.py"), "--json", path]
    if quick:
        args.append("--quick")
    t0 = time.perf_counter()
    print(f"\n=== {name} ===", flush=True)
    subprocess.run(args, check=True)
    print(f"({time.perf_counter() - t0:.0f} s)", flush=True)
    with open(path) as f:
        return json.load(f)  # type: ignore[no-any-return]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs everywhere")
    parser.add_argument("--json", help="write every program's results here")
    parser.add_argument("--only", nargs="*", choices=PROGRAMS, help="run only these programs")
    args = parser.parse_args()
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or PROGRAMS:
            results[name] = run(name, args.quick, tmp)

    rows: list[tuple[str, str, str, str, str]] = []
    if p := results.get("bench_paced"):
        for key, res in p["configs"].items():
            if "adapter" not in res:
                continue
            a = res["adapter"]
            cpu = a["cpu_us_per_token"]
            step = float(key.split("@")[1].removesuffix("ms"))
            floor = res.get("h11-task", {}).get("cpu_us_per_token", float("nan"))
            sdk = res.get("sdk", {}).get("cpu_us_per_token", float("nan"))
            p99_target = step if key.startswith("128@") else 100.0
            rows.append(
                (
                    f"decode step C={key}: CPU/token",
                    f"{cpu:.1f} µs ({a['core_share']:.2f} core)",
                    f"design floor {floor:.1f} µs, SDK {sdk:.1f} µs",
                    f"{cpu / floor:.2f}× floor, {cpu / sdk:.2f}× SDK",
                    f"≤ 1.15× floor {verdict(cpu <= 1.15 * floor)}, ≤ 0.5× SDK"
                    f" {verdict(cpu <= 0.5 * sdk)}",
                )
            )
            rows.append(
                (
                    f"decode step C={key}: delivery p50/p99",
                    f"{a['lat_p50_ms']:.1f}/{a['lat_p99_ms']:.1f} ms",
                    f"raw {res.get('raw', {}).get('lat_p99_ms', float('nan')):.1f} ms p99",
                    "",
                    f"p99 ≤ {p99_target:g} ms {verdict(a['lat_p99_ms'] <= p99_target)}",
                )
            )
        if cap := p.get("capacity"):
            rows.append(
                (
                    f"decode step: largest C at {cap['step_ms']:g} ms",
                    f"{cap['streams']:,} streams",
                    "p99 < one step, ≥ 95 % delivered",
                    "",
                    "",
                )
            )
        rows.append(("load average (paced run)", p["load_before"], p["load_after"], "", ""))
    if s := results.get("bench_single"):
        a, sdk, fl = (s[k]["tokens_per_s"]["median"] for k in ("adapter", "sdk", "floor"))
        cpu = s["adapter"]["cpu_us_per_token"]["median"]
        rows.append(
            (
                "single: tokens/s",
                f"{a:,.0f}",
                f"SDK {sdk:,.0f}",
                f"{s['adapter_vs_sdk']:.1f}× SDK",
                f"≥ 35× {verdict(s['adapter_vs_sdk'] >= 35)}",
            )
        )
        rows.append(
            (
                "single: vs floor",
                f"{a:,.0f}",
                f"floor {fl:,.0f}",
                f"{s['adapter_vs_floor']:.2f}× floor",
                f"≥ 0.5× {verdict(s['adapter_vs_floor'] >= 0.5)}",
            )
        )
        rows.append(
            (
                "single: CPU/token",
                f"{cpu:.2f} µs",
                f"SDK {s['sdk']['cpu_us_per_token']['median']:.1f} µs",
                f"floor {s['floor']['cpu_us_per_token']['median']:.2f} µs",
                "",
            )
        )
    if c := results.get("bench_concurrency"):
        a, sdk = c["adapter"]["tokens_per_s"]["median"], c["sdk"]["tokens_per_s"]["median"]
        rows.append(
            (
                "1k streams: tokens/s",
                f"{a:,.0f}",
                f"SDK {sdk:,.0f}",
                f"{c['adapter_vs_sdk']:.1f}× SDK",
                f"≥ 6× {verdict(c['adapter_vs_sdk'] >= 6)}",
            )
        )
        ad, sd = c["adapter"], c["sdk"]
        rows.append(
            (
                "1k streams: TTFT p50/p99",
                f"{ad['ttft_ms'][0]:.0f}/{ad['ttft_ms'][1]:.0f} ms",
                f"SDK {sd['ttft_ms'][0]:.0f}/{sd['ttft_ms'][1]:.0f} ms",
                "",
                "",
            )
        )
        rows.append(
            (
                "1k streams: ITL p50/p99",
                f"{ad['itl_us'][0]:.1f}/{ad['itl_us'][1]:.0f} µs",
                f"SDK {sd['itl_us'][0]:.1f}/{sd['itl_us'][1]:.0f} µs",
                "",
                "",
            )
        )
        rss = ad["rss_per_stream_kib"]
        rows.append(
            (
                "1k streams: RSS/stream",
                f"{rss:.1f} KiB",
                f"SDK {sd['rss_per_stream_kib']:.1f} KiB",
                f"floor {c['floor']['rss_per_stream_kib']:.1f} KiB",
                f"≤ 20 KiB {verdict(rss <= 20)}",
            )
        )
        rows.append(
            (
                "upstream headroom",
                f"raw {c['raw']['tokens_per_s']['median']:,.0f}",
                "",
                f"{c['raw_vs_adapter']:.1f}× adapter",
                "",
            )
        )
    if mem := results.get("bench_memory"):
        if "adapter" in mem:
            a = mem["adapter"]
            kib = a["rss"] / 1024
            rows.append(
                (
                    f"{mem['streams']:,} open: RSS/stream",
                    f"{kib:.1f} KiB (pymalloc in use {a['pymalloc'].get('in_use', 0) / 1024:.1f})",
                    f"design floor {mem.get('h11-task', {}).get('rss', float('nan')) / 1024:.1f} KiB,"
                    f" raw {mem.get('raw', {}).get('rss', float('nan')) / 1024:.1f} KiB",
                    f"httpx2 floor {mem.get('floor', {}).get('rss', float('nan')) / 1024:.1f} KiB",
                    f"≤ 20 KiB {verdict(kib <= 20)}",
                )
            )
    if k := results.get("bench_cancel"):
        rows.append(
            (
                "cancel → End p99",
                f"{k['end_p99_ms']:.3f} ms",
                "",
                "",
                f"≤ 0.5 ms {verdict(k['end_p99_ms'] <= 0.5)}",
            )
        )
        rows.append(
            (
                "cancel → upstream closed p99",
                f"{k['closed_p99_ms']:.3f} ms",
                f"raw socket's close {k['raw full']['closed_ms'][1]:.3f} ms",
                "",
                f"≤ 0.3 ms {verdict(k['closed_p99_ms'] <= 0.3)}",
            )
        )
    if t := results.get("bench_ttft"):
        rows.append(
            (
                "TTFT overhead (1 token)",
                f"{t['overhead_ms']:.3f} ms",
                f"httpx2 {t['httpx2']['p50_ms']['median']:.3f} ms",
                f"adapter {t['adapter']['p50_ms']['median']:.3f} ms",
                f"≤ 0.2 ms {verdict(t['overhead_ms'] <= 0.2)}",
            )
        )
    if su := results.get("bench_setup"):
        a, raw, floor = su["adapter"], su["raw"], su["h11-task"]
        rows.append(
            (
                f"set-up: CPU/task ({su['streams']:,} at once)",
                f"{a['cpu_us_per_task']['median']:.0f} µs",
                f"raw trio {raw['cpu_us_per_task']['median']:.0f} µs,"
                f" design floor {floor['cpu_us_per_task']['median']:.0f} µs",
                f"{su['cpu_vs_raw']:.2f}× raw, {su['cpu_vs_floor']:.2f}× floor",
                "",
            )
        )
        rows.append(
            (
                f"set-up: TTFT p50/p99 ({su['streams']:,} at once)",
                f"{a['ttft_p50_ms']:.0f}/{a['ttft_p99_ms']:.0f} ms",
                f"raw trio {raw['ttft_p50_ms']:.0f}/{raw['ttft_p99_ms']:.0f} ms",
                f"{su['ttft_vs_raw']:.2f}× raw (p99)",
                f"≤ 2× raw {verdict(su['ttft_vs_raw'] <= 2)}",
            )
        )
        if (direct := su.get("h11-task-direct")) and "raw-direct" in su:
            rows.append(
                (
                    "set-up: all with a direct connect",
                    f"{a['cpu_us_per_task']['median']:.0f} µs",
                    f"raw {su['raw-direct']['cpu_us_per_task']['median']:.0f} µs,"
                    f" design floor {direct['cpu_us_per_task']['median']:.0f} µs",
                    f"{su['cpu_vs_floor_direct']:.2f}× floor",
                    "",
                )
            )
    if e := results.get("bench_end"):
        rows.append(
            (
                "End after [DONE], body held open",
                f"p50 {e['holds']['p50_ms']:.3f} / p99 {e['holds']['p99_ms']:.3f} ms",
                f"body ended p99 {e['clean']['p99_ms']:.3f} ms",
                "",
                f"≤ 1 ms {verdict(e['holds']['p99_ms'] <= 1.0)}",
            )
        )
    if i := results.get("bench_import"):
        rows.append(
            (
                "import time",
                f"{i['oai_adapter']['median']:.0f} ms",
                f"openai {i['openai']['median']:.0f} ms",
                f"{i['openai_vs_adapter']:.1f}× faster",
                "",
            )
        )
    if h := results.get("bench_h2"):
        rows.append(
            (
                "cancel → reset p50/p99",
                f"h2 {h['cancel_h2_p50_ms']:.2f}/{h['cancel_h2_p99_ms']:.2f} ms",
                f"h1.1 {h['cancel_h1_p50_ms']:.2f}/{h['cancel_h1_p99_ms']:.2f} ms",
                "",
                "",
            )
        )
        rows.append(
            (
                "100 streams: h2 vs h1.1",
                f"{h['throughput_h2']:,.0f} tok/s",
                f"h1.1 {h['throughput_h1']:,.0f}",
                f"{h['throughput_h2'] / h['throughput_h1']:.2f}× h1.1",
                "",
            )
        )
    if m := results.get("micro_stages"):
        ns = m["ns_per_token"]
        rows.append(
            (
                "stages ns/token",
                f"split {ns['sse_split']:.0f}",
                f"decode {ns['decode']:.0f}",
                f"map {ns['map']:.0f}",
                f"channel {ns['channel']:.0f}",
            )
        )

    info = machine()
    print(
        f"\n=== summary ({info['date']}; {info['cpu']}, {info['nproc']} cores, Python {info['python']};"
        f" {time.perf_counter() - t0:.0f} s) ==="
    )
    widths = [max(len(r[i]) for r in rows) for i in range(5)] if rows else [0] * 5
    head = ("figure", "oai_adapter", "compared with", "ratio", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    for r in (head, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, **results}, f, indent=1)


if __name__ == "__main__":
    main()

"""Import time: `import oai_adapter` vs `import openai`, each in a fresh interpreter.

Each figure is the wall time of the import statement alone (`time.perf_counter()` around it),
median over several fresh processes; a bare interpreter start is not included.

    python benchmarks/bench_import.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT, machine, ratio, summarize, write_json

PROBE = "import time; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"


def import_seconds(mod: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(mod=mod)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    runs = 5 if args.quick else 15
    mods = ("oai_adapter", "openai", "httpx2", "trio")
    results: dict[str, list[float]] = {m: [] for m in mods}
    for _ in range(runs):
        for m in mods:  # interleaved, so drift hits all alike
            results[m].append(import_seconds(m) * 1e3)
    out: dict[str, object] = {"runs": runs}
    print(f"Import time, fresh interpreter each ({runs} runs, median)")
    for m in mods:
        s = summarize(results[m])
        out[m] = s.as_dict()
        print(f"  import {m:<12} {s.median:7.1f} ms (min {s.lo:.1f}, max {s.hi:.1f})")
    r = ratio(summarize(results["openai"]).median, summarize(results["oai_adapter"]).median)
    out["openai_vs_adapter"] = r
    print(
        f"openai ÷ oai_adapter = {r:.2f}× (oai_adapter includes trio, httpx2, msgspec and loguru)"
    )
    out["machine"] = machine()
    write_json(args.json, out)


if __name__ == "__main__":
    main()

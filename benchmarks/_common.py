"""What every benchmark program shares: the upstream process, statistics, the machine, results.

Each program prints its own figures and ratios, and with `--json PATH` also writes them for
`run_all.py`'s summary table. Nothing here is timed itself.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# One percentile for the CLI's `bench` and these programs (linear between ranks, numpy's
# default); tests/test_bench_stats.py covers it. Re-exported for the programs.
from oai_adapter._cli._stats import percentile as percentile  # noqa: E402


@contextmanager
def upstream_process(cpu: int | None = None, script: str = "sse_server.py") -> Iterator[int]:
    """An upstream `script` in `benchmarks/` (`sse_server.py`, or `close_server.py` for the
    cancel benchmark) in its own process, pinned to `cpu` when given; yields the port it printed."""
    pin = [] if cpu is None else ["--cpu", str(cpu)]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, script), *pin],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


def run_child(args: Sequence[str], timeout: float = 600) -> dict[str, Any]:
    """Run `python <args>` (a contender in its own process); its last stdout line is JSON."""
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Summary:
    median: float
    lo: float
    hi: float
    n: int

    def spread_pct(self) -> float:
        """(max − min) / median, in percent."""
        return 100.0 * (self.hi - self.lo) / self.median if self.median else 0.0

    def fmt(self, unit: str = "", digits: int = 1) -> str:
        return (
            f"{self.median:,.{digits}f}{unit} (min {self.lo:,.{digits}f}, max {self.hi:,.{digits}f},"
            f" n={self.n})"
        )

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": self.n}


def summarize(values: Sequence[float]) -> Summary:
    return Summary(statistics.median(values), min(values), max(values), len(values))


def split_cpus() -> tuple[int | None, int | None]:
    """(server CPU, client CPU): two different CPUs of those this process may use, or
    (None, None) where there is one CPU or no affinity call (the programs then do not pin)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[-1]) if len(cpus) >= 2 else (None, None)


def pin_to(cpu: int | None) -> None:
    """Run this process on `cpu` only (no-op for None)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def load_average() -> str:
    """The 1/5/15-minute load averages, as `uptime` prints them."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def rss_kib() -> int:
    """This process's resident set now (VmRSS), KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    import httpx2
    import msgspec
    import trio

    try:
        import openai

        openai_version = openai.__version__
    except ImportError:  # pragma: no cover
        openai_version = "absent"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "trio": trio.__version__,
        "httpx2": httpx2.__version__,
        "msgspec": msgspec.__version__,
        "openai": openai_version,
    }


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=1)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")

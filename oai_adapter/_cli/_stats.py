"""`bench` figures, computed from per-request timestamps. Sans-IO: numbers in, a summary out.

Definitions follow the serving benchmarks (vLLM's `benchmark_serving`, the usual reference), all
measured on the client, where a user of the adapter sees the tokens:

- TTFT: request start (`submit` entered) → first Token.
- ITL: the gap between two consecutive Tokens of one request; every gap of every request is
  one sample (a network read that carries several tokens yields gaps of ~0, as there).
- TPOT: per request, `(E2EL − TTFT) / (n − 1)` for a request with n ≥ 2 tokens.
- E2EL: request start → `End`.
- Throughput: output tokens of the successful requests / wall time of the whole run.

Percentiles interpolate linearly between the two nearest ranks (numpy's default), so p50 of
an even-sized sample is the mean of the middle two.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["PERCENTILES", "BenchReport", "Distribution", "RequestSample", "percentile", "summarize"]

PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True, slots=True)
class RequestSample:
    """One request: its start, each Token's arrival, its end (seconds), how it ended."""

    start: float
    token_times: Sequence[float]
    end: float
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Distribution:
    """Milliseconds: count, mean and the percentiles of `PERCENTILES` (keys like "p50")."""

    count: int
    mean: float | None
    percentiles: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | int | None]:
        return {"count": self.count, "mean": self.mean, **self.percentiles}


@dataclass(frozen=True, slots=True)
class BenchReport:
    requests: int
    succeeded: int
    failed: int
    wall_s: float
    tokens_out: int
    tokens_per_s: float | None
    requests_per_s: float | None
    ttft_ms: Distribution
    itl_ms: Distribution
    tpot_ms: Distribution
    e2el_ms: Distribution
    errors: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "wall_s": self.wall_s,
            "tokens_out": self.tokens_out,
            "tokens_per_s": self.tokens_per_s,
            "requests_per_s": self.requests_per_s,
            "ttft_ms": self.ttft_ms.as_dict(),
            "itl_ms": self.itl_ms.as_dict(),
            "tpot_ms": self.tpot_ms.as_dict(),
            "e2el_ms": self.e2el_ms.as_dict(),
            "errors": dict(self.errors),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 ≤ q ≤ 100) of a non-empty sample, linear interpolation."""
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _distribution(values_s: Sequence[float]) -> Distribution:
    ms = [v * 1000.0 for v in values_s]
    if not ms:
        return Distribution(0, None, {f"p{q:g}": None for q in PERCENTILES})
    return Distribution(
        len(ms), sum(ms) / len(ms), {f"p{q:g}": percentile(ms, q) for q in PERCENTILES}
    )


def summarize(samples: Sequence[RequestSample], wall_s: float) -> BenchReport:
    """The figures of a run; only successful requests count towards the latencies."""
    ok = [s for s in samples if s.ok]
    ttft: list[float] = []
    itl: list[float] = []
    tpot: list[float] = []
    e2el: list[float] = []
    tokens = 0
    for s in ok:
        times = s.token_times
        n = len(times)
        tokens += n
        e2el.append(s.end - s.start)
        if n:
            ttft.append(times[0] - s.start)
            itl.extend(b - a for a, b in itertools.pairwise(times))
        if n >= 2:
            tpot.append(((s.end - s.start) - (times[0] - s.start)) / (n - 1))
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            key = s.error or "unknown"
            errors[key] = errors.get(key, 0) + 1
    return BenchReport(
        requests=len(samples),
        succeeded=len(ok),
        failed=len(samples) - len(ok),
        wall_s=wall_s,
        tokens_out=tokens,
        tokens_per_s=tokens / wall_s if wall_s > 0 else None,
        requests_per_s=len(ok) / wall_s if wall_s > 0 else None,
        ttft_ms=_distribution(ttft),
        itl_ms=_distribution(itl),
        tpot_ms=_distribution(tpot),
        e2el_ms=_distribution(e2el),
        errors=errors,
    )

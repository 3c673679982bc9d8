"""`just soak`'s machinery on a few hundred tasks, so the harness cannot rot: the same run as
`benchmarks/soak.py` (replicas, faults, cancels, rebinds, samples, verdict, plot) at a small
count on `loopback_clock`, plus its verdict and its per-task check on made-up cases, so a harness
that could only say PASS would fail here.

The full 100,000-task soak is not run here: it takes minutes in real time (`just soak`; its last
run is in docs/performance.md, "Reliability"). Its 10,000-task `--quick` run takes ~40–100 s on
2 cores, over the 20 s the issue allows for `just test`.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from oai_adapter import End, ErrorKind, Metrics, Started, Token

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import soak

TASKS = 240


@pytest.mark.parametrize(("mode", "tasks"), [("host", 240), ("adapter", 120)])
async def test_soak_harness_runs_a_few_hundred_tasks_and_finds_nothing(
    loopback_clock: MockClock, mode: str, tasks: int
) -> None:
    lines: list[str] = []
    opts = soak.Options(
        tasks=tasks,
        concurrency=24,
        sessions=40,
        rebind_every=0.05,
        mode=mode,
        echo=lines.append,
    )
    try:
        with trio.fail_after(600):  # trio seconds
            report = await soak.soak(opts)
    finally:
        print("\n".join(lines))  # shown when the test fails (a hang prints its task tree)
    assert soak.verdict(report, check_rss=False) == [], lines
    assert report.samples[-1].done == tasks
    assert report.rebinds >= 1, report.samples[-1]  # a replica was rebound under load
    assert report.outcomes["stop"] > 0
    assert report.outcomes["cancelled"] > 0
    assert report.outcomes[ErrorKind.WORKER_RESET] + report.outcomes[ErrorKind.PROTOCOL] > 0
    assert report.affinity_repeat > 0
    assert report.checkpoints["after"]["adapters_alive"] == 0
    assert any(line.startswith("[   after]") for line in lines)


def _stream(*events: object) -> soak.Outcome:
    return soak.Outcome(events=list(events))


S = Started(task_id="t", model="m", attempt=1, http_version="HTTP/1.1", replica_id="r0")
ELSEWHERE = Started(task_id="t", model="m", attempt=1, http_version="HTTP/1.1", replica_id="x")
T0 = Token(task_id="t", index=0, text="w0 ")
M1 = Metrics(
    task_id="t",
    ttft_ms=1.0,
    decode_time_ms=0.0,
    duration_ms=1.0,
    tokens_out=1,
    prompt_tokens=None,
    completion_tokens=None,
    retries=0,
)
STOP = End(task_id="t", reason="stop", tokens_out=1)
CANCELLED = End(task_id="t", reason="cancelled", tokens_out=1)


def test_a_well_formed_stream_is_no_violation() -> None:
    assert soak.violation(_stream(S, T0, M1, STOP), soak.REPLICAS, soak.TOKENS) is None
    cancelled = _stream(S, T0, CANCELLED)
    cancelled.cancel_at = 2
    assert soak.violation(cancelled, soak.REPLICAS, soak.TOKENS) is None


@pytest.mark.parametrize(
    ("outcome", "why"),
    [
        (_stream(S, T0, STOP), "grammar"),  # no Metrics before a non-cancel End
        (_stream(S, T0, M1, STOP, T0), "grammar"),  # something after End
        (_stream(S, T0, CANCELLED), "no cancel"),
        (_stream(ELSEWHERE, T0, M1, STOP), "replica_id"),
        (soak.Outcome(hung=True), "no End"),
        (soak.Outcome(escaped=RuntimeError("boom")), "escaped"),
    ],
)
def test_a_broken_stream_is_a_violation(outcome: soak.Outcome, why: str) -> None:
    problem = soak.violation(outcome, soak.REPLICAS, soak.TOKENS)
    assert problem is not None
    assert why in problem


def test_tokens_after_a_cancel_that_returned_true_are_a_violation() -> None:
    late = _stream(S, T0, M1, STOP)
    late.cancel_at = 2
    assert "cancel() returned True" in (soak.violation(late, soak.REPLICAS, soak.TOKENS) or "")


def _sample(done: int, rss: int, fds: int = 10, tasks: int = 5, label: str = "run") -> soak.Sample:
    return soak.Sample(label, done, float(done), rss, fds, fds // 2, tasks, 0, 0, 0)


def _report(rss_at_end: int, *, fds_after: int = 10, tasks_after: int = 5) -> soak.Report:
    report = soak.Report(soak.Options(tasks=100))
    report.baseline = _sample(0, 100, label="baseline")
    report.samples = [_sample(d, 200 if d < 100 else rss_at_end) for d in range(0, 101, 10)]
    report.after = _sample(100, rss_at_end, fds=fds_after, tasks=tasks_after, label="after")
    return report


def test_verdict_passes_a_flat_clean_run() -> None:
    assert soak.verdict(_report(215)) == []


def test_verdict_fails_on_rss_growth_leftover_fds_tasks_and_registries() -> None:
    report = _report(230, fds_after=12, tasks_after=7)
    report.after_tasks = Counter({"reader": 2})
    report.registries_at_end = {"pool.tasks": 1}
    report.violations = 1
    report.examples = ["t1: grammar: more than one End"]
    reasons = " | ".join(soak.verdict(report))
    assert "RSS grew +15.0%" in reasons
    assert "fds 10 before the pool, 12 after it" in reasons
    assert "trio tasks 5 before the pool, 7 after" in reasons
    assert "registries not empty" in reasons
    assert "1 violations" in reasons


def test_verdict_fails_when_tasks_are_missing() -> None:
    report = _report(200)
    report.samples = report.samples[:-1]
    assert any("of 100 tasks ended" in r for r in soak.verdict(report))

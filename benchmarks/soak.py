"""`just soak`: 100,000 tasks through a pool with faults, cancels and rebinds (issue 17).

One process, one trio run, real time. Three loopback replicas (`oai_adapter.testing.FakeUpstream`)
each answer every completion request at random (seeded): a normal stream, a 503, a 429 with
`Retry-After`, a reset mid-stream, a stall that the idle timeout cuts, or a malformed event. An
`AdapterHost` over them (short breaker, probe and drain periods) runs `--tasks` tasks,
`--concurrency` at a time, from a fixed set of sessions (so affinity is exercised); 5 % are
cancelled after their first Token; every `--rebind-every` seconds one replica is rebound to a
fresh upstream, under load, and the old upstream is stopped once the old adapter has drained and
closed its connections.

Checked for every task: the event grammar (`oai_adapter.testing.check_stream`: one `End`, nothing
after it, `Metrics` before every non-cancel `End` after `Started`, consecutive indices, Tokens a
prefix of the upstream's text), a `cancel()` that returned True followed at once by
`End(cancelled)`, no `End(cancelled)` without one, and the serving replica one of the pool's.
Sampled every 1 % (printed every 10 %): RSS, open fds and sockets, trio's living tasks (a walk
from the root task), the pool's registries and the upstreams' open connections.

Verdict (exit code 1 on FAIL): zero violations; RSS growth from 20 % to 100 % of the run ≤ 10 %;
after the pool is left, fds and trio tasks back to their baseline (taken with the upstreams
serving, before the pool opened), the registries were empty at 100 %, and every upstream has
closed its connections. A PNG of RSS, fds and tasks over the run, and the samples as CSV, go to
`--out` (default `.soak-out/`).

`--adapter` runs the same load through a stand-in pool of plain `OpenAIAdapter`s (rendezvous
affinity and rebind-with-drain only: no failover, breaker or shared budget), as a comparison.

    python benchmarks/soak.py [--tasks N | --quick] [--concurrency N] [--seed N] [--out DIR] [--adapter]

Numbers: 200 at a time and a rebind every 2 s are the issue's; the 200 ms idle timeout cuts a
stall quickly in real time yet is far above a loopback stream's gaps under this load; 16 tokens
per stream keep 100,000 tasks to a few minutes on 2 cores; 2,000 sessions give each about 50
tasks over a full run.
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import math
import os
import random
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
import trio.testing

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from oai_adapter import (  # noqa: E402
    AdapterConfig,
    AdapterHost,
    End,
    HostPolicy,
    Metrics,
    OpenAIAdapter,
    RetryPolicy,
    Started,
    TaskRequest,
    Timeouts,
    Token,
)
from oai_adapter.testing import (  # noqa: E402
    FakeUpstream,
    Fault,
    Hang,
    Reply,
    Reset,
    Send,
    check_stream,
    render_stream,
)

TASKS = 100_000
QUICK_TASKS = 10_000
CONCURRENCY = 200
CANCEL_SHARE = 0.05
SESSIONS = 2_000
REBIND_EVERY = 2.0
POOL = "soak"
REPLICAS = ("r0", "r1", "r2")
TOKENS = [f"w{i} " for i in range(16)]
RSS_GROWTH_LIMIT = 0.10
#: Replies queued ahead on each upstream; every attempt takes one. Kept topped up rather than
#: scripted for the whole run, so the queue's own memory is flat.
REPLIES_AHEAD = 1_000
#: After a rebind, the old upstream must have no connection left within the drain timeout +
#: this: the host's eviction grace (2 s) and client close (1 s) plus the seconds of scheduling
#: delay a loaded 2-core machine adds. A socket the adapter forgot to close would be closed
#: only by the garbage collector: that shows as a `ResourceWarning`, counted as a failure.
RETIRE_GRACE = 15.0
#: A task that has not ended after this long (seconds) is a violation (the config's `total`
#: timeout is 20 s; failovers under a host stay within it).
TASK_DEADLINE = 40.0
#: Latencies kept for the percentiles (a uniform reservoir: the memory stays flat).
RESERVOIR = 10_000
#: Seconds without a task ending (or a phase moving on) after which the run is declared stuck.
STUCK_AFTER = 120.0

#: The answer mix, per completion request (weights in %).
FAULTS: dict[str, int] = {
    "ok": 80,
    "503": 4,
    "429": 4,
    "reset": 4,
    "stall": 4,
    "malformed": 4,
}

#: `idle` cuts a stall; the others are generous, because on a shared 2-core machine 200 streams
#: and their upstreams in one process see seconds of queueing (the host's background probes are
#: bounded by max(`connect`, `probe_interval`): a probe that times out marks a replica not ready).
TIMEOUTS = Timeouts(connect=5.0, first_token=10.0, idle=0.2, total=20.0)
RETRY = RetryPolicy(max_attempts=2, base=0.01, cap=0.1)


#: The normal stream (chat, with usage: the adapter asks for it), as the upstream renders it.
NORMAL = render_stream("chat", TOKENS, usage=(1, len(TOKENS)), model="test-model")


def _split_after(tokens: int) -> tuple[bytes, bytes]:
    """`NORMAL`'s bytes cut after its first `tokens` token frames: (head, rest)."""
    parts: tuple[list[bytes], list[bytes]] = ([], [])
    seen = 0
    for step in NORMAL:
        assert isinstance(step, Send)
        seen += step.token
        parts[seen > tokens].append(step.data)
    return b"".join(parts[0]), b"".join(parts[1])


#: Fault.malformed's default bytes: a truncated JSON event.
OK = Reply(steps=[Send(b"".join(step.data for step in NORMAL if isinstance(step, Send)))])
MALFORMED = next(s.data for s in Fault.malformed().steps or () if isinstance(s, Send))


_DIGITS = re.compile(r"\d+(?:\.\d+)?")


def random_reply(name: str, rng: random.Random) -> Reply:
    """One attempt's answer of kind `name` (see `FAULTS`); mid-stream faults after ≥ 1 token."""
    k = rng.randrange(1, len(TOKENS))
    if name == "503":
        return Fault.status(503)
    if name == "429":
        # OpenAI's shape: both headers; the adapter prefers the millisecond one.
        ms = rng.randrange(20, 100)
        return Fault.status(429, retry_after="1", retry_after_ms=str(ms))
    # The stream goes out in one write (or two around a fault), not one write per token: the
    # soak is about lifecycles, and a write per token would double its CPU time.
    head, rest = _split_after(k)
    if name == "reset":
        return Reply(steps=[Send(head), Reset()])
    if name == "stall":
        return Reply(steps=[Send(head), Hang()])  # until the client goes away: idle cuts it
    if name == "malformed":
        return Reply(steps=[Send(head), Send(MALFORMED + rest)])
    return OK


class Replies:
    """Draws answers for one upstream from the seeded mix and keeps its queue topped up."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.names = list(FAULTS)
        self.weights = list(FAULTS.values())
        self.scripted: Counter[str] = Counter()

    def top_up(self, upstream: FakeUpstream) -> None:
        missing = REPLIES_AHEAD - len(upstream.replies)
        if missing <= 0:
            return
        for name in self.rng.choices(self.names, self.weights, k=missing):
            self.scripted[name] += 1
            upstream.script(random_reply(name, self.rng))


# --- measurements ------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size now (Linux `/proc/self/statm`; elsewhere the peak from `resource`)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def open_fds() -> tuple[int, int]:
    """(open file descriptors, of which sockets), from `/proc/self/fd`; (-1, -1) elsewhere."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return -1, -1
    sockets = 0
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                sockets += 1
        except OSError:
            pass  # the fd of the listdir itself, closed by now
    return len(names), sockets


def trio_tasks() -> Counter[str]:
    """Living trio tasks by name, walked from the root task."""
    names: Counter[str] = Counter()
    root = trio.lowlevel.current_root_task()
    assert root is not None  # called inside trio.run
    stack = [root]
    while stack:
        task = stack.pop()
        names[task.name] += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


@dataclass(frozen=True, slots=True)
class Sample:
    label: str
    done: int
    t: float  # seconds since the run started (trio's clock)
    rss: int
    fds: int
    sockets: int
    tasks: int
    registries: int  # entries in the pool's and its adapters' registries
    connections: int  # connections the upstreams hold open (the pool's, seen from the server)
    violations: int

    def line(self, total: int) -> str:
        pct = f"{100 * self.done / total:3.0f}%" if total else "   "
        rate = f"{self.done / self.t:6.0f}/s" if self.t > 0 else "      -"
        return (
            f"[{self.label:>8}] {pct} {self.done:>8,} done  t={self.t:7.1f}s {rate}  "
            f"rss={self.rss / 2**20:6.1f} MiB  fds={self.fds:4}  sockets={self.sockets:4}  "
            f"tasks={self.tasks:5}  registries={self.registries:4}  "
            f"connections={self.connections:4}  violations={self.violations}"
        )


# --- the grammar, per task ---------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    events: list[Any] = field(default_factory=list)
    cancel_at: int | None = None  # len(events) when cancel() returned True
    hung: bool = False
    escaped: BaseException | None = None


def violation(out: Outcome, replicas: Sequence[str], tokens: Sequence[str]) -> str | None:
    """Why this task's stream breaks the contract, or None."""
    if out.escaped is not None:
        return f"an exception escaped the submit block: {out.escaped!r}"
    if out.hung:
        return f"no End within {TASK_DEADLINE} s"
    try:
        end = check_stream(out.events, tokens=tokens)
    except AssertionError as exc:
        return f"grammar: {exc}"
    if out.cancel_at is not None:
        if len(out.events) != out.cancel_at + 1 or end.reason != "cancelled":
            after = out.events[out.cancel_at : out.cancel_at + 2]
            return f"cancel() returned True, then {after!r}"
    elif end.reason == "cancelled":
        return "End(cancelled) though no cancel() returned True"
    first = out.events[0]
    if isinstance(first, Started) and first.replica_id not in replicas:
        return f"Started.replica_id {first.replica_id!r} is not one of {list(replicas)}"
    return None


# --- the pools ---------------------------------------------------------------------------


class Pool(Protocol):
    """What the soak drives: the host's API for one pool, or the stand-in's."""

    async def bind(self, replica_id: str, config: AdapterConfig) -> None: ...

    def submit(self, req: TaskRequest) -> AbstractAsyncContextManager[AsyncIterator[Any]]: ...

    def cancel(self, task_id: str) -> bool: ...

    def registries(self) -> dict[str, int]:
        """Entries in every registry the pool keeps (name → count); all 0 when idle."""
        ...

    def counters(self) -> dict[str, int]:
        """The pool's own figures for the report (submitted, failovers, …)."""
        ...


def rendezvous(session_id: str, replica_ids: Sequence[str]) -> str:
    """Highest-random-weight choice with a stable hash (what HOST.md asks of the host)."""

    def weight(replica_id: str) -> bytes:
        return hashlib.blake2b(f"{session_id}\0{replica_id}".encode(), digest_size=8).digest()

    return max(replica_ids, key=weight)


class _Bound:
    def __init__(self, adapter: OpenAIAdapter) -> None:
        self.adapter = adapter
        self.running = 0
        self.retired = False
        self.drained = trio.Event()

    def release(self) -> None:
        self.running -= 1
        if self.retired and self.running == 0:
            self.drained.set()

    def retire(self) -> None:
        self.retired = True
        if self.running == 0:
            self.drained.set()


class AdapterPool:
    """The stand-in: one `OpenAIAdapter` per replica, session affinity by rendezvous hashing,
    rebind = open the new adapter, route new tasks to it, close the old one when its tasks end."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._live: dict[str, _Bound] = {}
        self._by_task: dict[str, _Bound] = {}
        self._all: set[_Bound] = set()
        self._submitted = 0

    async def bind(self, replica_id: str, config: AdapterConfig) -> None:
        bound: _Bound = await self._nursery.start(self._hold, config)
        old = self._live.get(replica_id)
        self._live[replica_id] = bound
        if old is not None:
            old.retire()

    async def _hold(
        self,
        config: AdapterConfig,
        *,
        task_status: trio.TaskStatus[_Bound] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with OpenAIAdapter(config) as adapter:
            bound = _Bound(adapter)
            self._all.add(bound)
            try:
                task_status.started(bound)
                await bound.drained.wait()
            finally:
                self._all.discard(bound)

    def close(self) -> None:
        for bound in self._live.values():
            bound.retire()
        self._live.clear()

    @asynccontextmanager
    async def submit(self, req: TaskRequest) -> AsyncIterator[AsyncIterator[Any]]:
        replica_id = rendezvous(req.session_id or req.task_id, sorted(self._live))
        bound = self._live[replica_id]
        bound.running += 1
        self._by_task[req.task_id] = bound
        self._submitted += 1
        try:
            async with bound.adapter.submit(req) as events:
                yield events
        finally:
            del self._by_task[req.task_id]
            bound.release()

    def cancel(self, task_id: str) -> bool:
        bound = self._by_task.get(task_id)
        return bound is not None and bound.adapter.cancel(task_id)

    def registries(self) -> dict[str, int]:
        counts = {"pool.tasks": len(self._by_task)}
        for i, bound in enumerate(sorted(self._all, key=id)):
            counts[f"adapter{i}.running"] = bound.adapter.statistics().running
        return counts

    def counters(self) -> dict[str, int]:
        return {"submitted": self._submitted, "adapters_open": len(self._all)}


@asynccontextmanager
async def open_adapter_pool() -> AsyncIterator[AdapterPool]:
    async with trio.open_nursery() as nursery:
        pool = AdapterPool(nursery)
        try:
            yield pool
        finally:
            pool.close()


class HostPool:
    """The pool under test: one pool of an `AdapterHost`."""

    def __init__(self, host: AdapterHost) -> None:
        self.host = host

    async def bind(self, replica_id: str, config: AdapterConfig) -> None:
        await self.host.bind(POOL, replica_id, config)

    def submit(self, req: TaskRequest) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        return self.host.submit(POOL, req)

    def cancel(self, task_id: str) -> bool:
        return self.host.cancel(POOL, task_id)

    def registries(self) -> dict[str, int]:
        stats = self.host.statistics().pools.get(POOL)
        if stats is None:
            return {}
        counts = {"host.running": stats.running}
        for replica_id, replica in stats.replicas.items():
            counts[f"host.{replica_id}.running"] = replica.running
        return counts

    def counters(self) -> dict[str, int]:
        stats = self.host.statistics().pools[POOL]
        return {
            "submitted": stats.submitted,
            "failovers": stats.failovers,
            "budget_refused": stats.budget_refused,
            "replica_failures": sum(r.failures for r in stats.replicas.values()),
        }


#: Short periods, so breakers open and close, probes run and drains end many times a run.
POLICY = HostPolicy(breaker_open=0.2, breaker_open_max=1.0, probe_interval=0.5, drain_timeout=1.0)


def live_adapters() -> list[OpenAIAdapter]:
    """Every `OpenAIAdapter` object alive in this process (the host keeps its own out of
    reach; their registries are read through their public `statistics()`)."""
    return [obj for obj in gc.get_objects() if isinstance(obj, OpenAIAdapter)]


def adapters_of(upstream: FakeUpstream) -> list[str]:
    """The adapters alive for this upstream: open or closed, and their running tasks."""
    found = []
    for adapter in live_adapters():
        if adapter.config.base_url == upstream.base_url:
            try:
                adapter.upstream  # noqa: B018 - raises once the adapter is closed
                state = "open"
            except RuntimeError:
                state = "closed"
            found.append(f"{state}, {adapter.statistics().running} running")
    return found


def deep_look(pool: Pool | None) -> dict[str, int]:
    """The costly part of a sample, taken at 20 %, 50 %, 100 % and after the pool: objects the
    garbage collector tracks (after a collection), `OpenAIAdapter`s alive and the tasks in
    their registries, and the pool's registries."""
    gc.collect()
    adapters = live_adapters()
    look = {
        "gc_objects": len(gc.get_objects()),
        "adapters_alive": len(adapters),
        "adapters_running": sum(adapter.statistics().running for adapter in adapters),
    }
    if pool is not None:
        look |= pool.registries()
    return look


# --- the replicas ------------------------------------------------------------------------


class Replicas:
    """The loopback upstreams: one live per replica id, old ones retired after a rebind."""

    def __init__(self, nursery: trio.Nursery, seed: int) -> None:
        self._nursery = nursery
        self._seed = seed
        self._made = 0
        self.live: dict[str, FakeUpstream] = {}
        self.replies: dict[str, Replies] = {}
        self.retiring: set[FakeUpstream] = set()
        self.scopes: dict[FakeUpstream, trio.CancelScope] = {}
        self.failures: list[str] = []
        self.retired = 0
        self._retired = trio.lowlevel.ParkingLot()

    async def start(self, replica_id: str) -> FakeUpstream:
        upstream = FakeUpstream(tokens=TOKENS, slots=100)
        self._made += 1
        self.replies[replica_id] = self.replies.get(replica_id) or Replies(
            random.Random(f"{self._seed}-{replica_id}")
        )
        self.replies[replica_id].top_up(upstream)
        scope = trio.CancelScope()
        self.scopes[upstream] = scope
        await self._nursery.start(self._serve, upstream, scope)
        return upstream

    @staticmethod
    async def _serve(
        upstream: FakeUpstream,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[FakeUpstream] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            await upstream.serve(task_status=task_status)

    def top_up(self) -> None:
        for replica_id, upstream in self.live.items():
            self.replies[replica_id].top_up(upstream)

    def retire(self, replica_id: str, old: FakeUpstream, within: float) -> None:
        """Stop `old` once it is quiet (no stream, no connection); a failure if it is not
        quiet `within` seconds."""
        self.retiring.add(old)
        self._nursery.start_soon(self._retire, replica_id, old, within)

    async def wait_retired(self) -> None:
        """Wait until every upstream rebound from is stopped."""
        while self.retiring:
            await self._retired.park()

    async def _retire(self, replica_id: str, old: FakeUpstream, within: float) -> None:
        try:
            await self._retire_quietly(replica_id, old, within)
        finally:
            self.stop(old)
            self.retired += 1
            self._retired.unpark_all()

    async def _retire_quietly(self, replica_id: str, old: FakeUpstream, within: float) -> None:
        at = trio.current_time()
        with trio.move_on_after(within) as waited:
            await old.wait_quiet()
        if waited.cancelled_caught:
            self.failures.append(
                f"{replica_id}: the upstream it was rebound from at t={at:.1f}s still had "
                f"{old.connections_open} connections and {old.streams_open} streams "
                f"{within:.0f} s later; its adapters: {adapters_of(old) or 'none alive'}"
            )

    def stop(self, upstream: FakeUpstream) -> None:
        self.scopes.pop(upstream).cancel()
        self.retiring.discard(upstream)

    def connections(self) -> int:
        return sum(u.connections_open for u in (*self.live.values(), *self.retiring))

    def scripted(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for replies in self.replies.values():
            total += replies.scripted
        return total


def config_for(upstream: FakeUpstream, replica_id: str) -> AdapterConfig:
    return AdapterConfig(
        pool_id=POOL,
        replica_id=replica_id,
        base_url=upstream.base_url,
        model=upstream.model,
        timeouts=TIMEOUTS,
        retry=RETRY,
        max_connections=CONCURRENCY,
    )


# --- the run -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    tasks: int = TASKS
    concurrency: int = CONCURRENCY
    seed: int = 17
    rebind_every: float = REBIND_EVERY
    cancel_share: float = CANCEL_SHARE
    sessions: int = SESSIONS
    mode: str = "host"  # or "adapter"
    plot_every: float = 0.01  # share of the run between two plotted samples
    print_every: float = 0.10
    echo: Callable[[str], None] = print


@dataclass(slots=True)
class Report:
    options: Options
    baseline: Sample | None = None
    samples: list[Sample] = field(default_factory=list)
    after: Sample | None = None
    after_tasks: Counter[str] = field(default_factory=Counter)
    baseline_tasks: Counter[str] = field(default_factory=Counter)
    violations: int = 0
    examples: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    registries_at_end: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # leaks found outside the samples
    rebinds: int = 0
    affinity_kept: int = 0
    affinity_repeat: int = 0
    scripted: Counter[str] = field(default_factory=Counter)
    checkpoints: dict[str, dict[str, int]] = field(default_factory=dict)
    unclosed: list[str] = field(default_factory=list)  # ResourceWarnings: closed only by GC
    phase: str = "start"  # for the watchdog: what the run is doing, and since when
    beat: float = 0.0
    messages: Counter[str] = field(default_factory=Counter)  # error messages, digits as N
    ttft_ms: list[float] = field(default_factory=list)  # reservoirs over the finished tasks
    duration_ms: list[float] = field(default_factory=list)
    finished: int = 0
    wall: float = 0.0

    def at(self, share: float) -> Sample | None:
        """The first sample at or past `share` of the run."""
        target = share * self.options.tasks
        return next((s for s in self.samples if s.done >= target), None)


def verdict(report: Report, *, check_rss: bool = True) -> list[str]:
    """The reasons the run FAILs; empty means PASS."""
    reasons: list[str] = []
    if report.violations:
        reasons.append(f"{report.violations} violations (first: {report.examples[0]})")
    done = report.samples[-1].done if report.samples else 0
    if done != report.options.tasks:
        reasons.append(f"{done} of {report.options.tasks} tasks ended")
    first, last = report.at(0.2), report.at(1.0)
    if check_rss and first is not None and last is not None:
        growth = last.rss / first.rss - 1
        if growth > RSS_GROWTH_LIMIT:
            reasons.append(
                f"RSS grew {growth:+.1%} from 20 % to 100 % (limit {RSS_GROWTH_LIMIT:.0%})"
            )
    base, after = report.baseline, report.after
    if base is None or after is None:
        reasons.append("no baseline or no sample after the pool was left")
    else:
        if after.fds != base.fds:
            reasons.append(f"fds {base.fds} before the pool, {after.fds} after it")
        if after.tasks != base.tasks:
            extra = report.after_tasks - report.baseline_tasks
            reasons.append(
                f"trio tasks {base.tasks} before the pool, {after.tasks} after ({dict(extra)})"
            )
        if after.connections:
            reasons.append(f"{after.connections} upstream connections still open after the pool")
    alive = report.checkpoints.get("after", {}).get("adapters_alive", 0)
    if alive:
        reasons.append(f"{alive} OpenAIAdapter objects still alive after the pool was left")
    busy = {k: v for k, v in report.registries_at_end.items() if v}
    if busy:
        reasons.append(f"registries not empty at the end: {busy}")
    if report.unclosed:
        reasons.append(f"resources closed only by the garbage collector: {report.unclosed}")
    reasons.extend(report.failures)
    return reasons


class Stuck(Exception):
    """No task ended and no phase moved on for `STUCK_AFTER` seconds."""


def task_tree() -> list[str]:
    """Every living trio task with where it waits (its innermost frames), identical lines
    counted once: what a hang report needs."""
    lines: Counter[str] = Counter()

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        frames = [
            f"{os.path.basename(f.f_code.co_filename)}:{lineno} {f.f_code.co_name}"
            for f, lineno in task.iter_await_frames()
        ]
        lines["  " * depth + f"{task.name} @ " + " > ".join(frames[-4:])] += 1
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    root = trio.lowlevel.current_root_task()
    assert root is not None  # called inside trio.run
    walk(root, 0)
    return [f"{n:4} × {line}" for line, n in lines.items()]


async def soak(opts: Options) -> Report:
    """Run the soak; the caller prints the verdict (`verdict(report)`). A run that stops
    making progress for `STUCK_AFTER` seconds prints its task tree and raises `Stuck`."""
    report = Report(opts)
    report.beat = trio.current_time()

    async def watchdog() -> None:
        while True:
            await trio.sleep(STUCK_AFTER / 4)
            if trio.current_time() - report.beat > STUCK_AFTER:
                for line in task_tree():
                    opts.echo(line)
                raise Stuck(f"no progress for {STUCK_AFTER:.0f} s in phase {report.phase!r}")

    def unclosed(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if len(report.unclosed) < 10:
            report.unclosed.append(f"{category.__name__}: {message}")
        else:
            report.unclosed[-1] = f"… and more ({category.__name__}: {message})"

    with warnings.catch_warnings():
        warnings.simplefilter("always", ResourceWarning)
        warnings.showwarning = unclosed
        async with trio.open_nursery() as guard:
            guard.start_soon(watchdog)
            await _soak(opts, report)
            guard.cancel_scope.cancel()
    return report


async def _soak(opts: Options, report: Report) -> None:
    rng = random.Random(opts.seed)
    echo = opts.echo
    start = trio.current_time()
    wall_start = time.monotonic()
    pending = [0]  # tasks handed out
    done = [0]
    next_plot = [0.0]
    next_print = [0.0]
    last_replica: dict[str, str] = {}
    checkpoints = [0.2, 0.5, 1.0]

    def phase(name: str) -> None:
        report.phase, report.beat = name, trio.current_time()

    async with trio.open_nursery() as outer:
        replicas = Replicas(outer, opts.seed)

        def sample(label: str, pool: Pool | None) -> Sample:
            fds, sockets = open_fds()
            registries = sum(pool.registries().values()) if pool is not None else 0
            return Sample(
                label=label,
                done=done[0],
                t=trio.current_time() - start,
                rss=rss_bytes(),
                fds=fds,
                sockets=sockets,
                tasks=sum(trio_tasks().values()),
                registries=registries,
                connections=replicas.connections(),
                violations=report.violations,
            )

        for replica_id in REPLICAS:
            replicas.live[replica_id] = await replicas.start(replica_id)
        await trio.testing.wait_all_tasks_blocked()
        report.baseline_tasks = trio_tasks()
        report.baseline = sample("baseline", None)
        echo(report.baseline.line(opts.tasks))

        def progress(pool: Pool) -> None:
            share = done[0] / opts.tasks
            while share >= next_plot[0] - 1e-9 and next_plot[0] <= 1 + 1e-9:
                printed = share >= next_print[0] - 1e-9
                s = sample("run", pool)
                if not report.samples or report.samples[-1].done != s.done:
                    report.samples.append(s)
                if printed:
                    echo(s.line(opts.tasks))
                    next_print[0] += opts.print_every
                next_plot[0] += opts.plot_every
            while checkpoints and share >= checkpoints[0] - 1e-9:
                label = f"{checkpoints.pop(0):.0%}"
                report.checkpoints[label] = deep_look(pool)
                echo(f"[{label:>8}] {report.checkpoints[label]}")

        async def one(pool: Pool, i: int, session: str, cancel: bool) -> None:
            task_id = f"t{i}"
            out = Outcome()
            req = TaskRequest(task_id=task_id, prompt="soak", session_id=session)
            with trio.move_on_after(TASK_DEADLINE) as deadline:
                try:
                    async with pool.submit(req) as events:
                        async for ev in events:
                            out.events.append(ev)
                            if isinstance(ev, End):
                                break
                            if cancel and isinstance(ev, Token) and ev.index == 0:
                                if pool.cancel(task_id):
                                    out.cancel_at = len(out.events)
                except Exception as exc:
                    out.escaped = exc
            out.hung = deadline.cancelled_caught
            problem = violation(out, REPLICAS, TOKENS)
            if problem is not None:
                report.violations += 1
                if len(report.examples) < 10:
                    report.examples.append(f"{task_id}: {problem}; events {out.events[:4]!r}…")
            end = out.events[-1] if out.events else None
            metrics = out.events[-2] if len(out.events) >= 2 else None
            if isinstance(metrics, Metrics) and isinstance(end, End) and end.reason == "stop":
                report.finished += 1
                slot = report.finished - 1
                if slot >= RESERVOIR:
                    slot = rng.randrange(report.finished)
                if slot < RESERVOIR:
                    ttft = metrics.ttft_ms if metrics.ttft_ms is not None else math.nan
                    if slot == len(report.ttft_ms):
                        report.ttft_ms.append(ttft)
                        report.duration_ms.append(metrics.duration_ms)
                    else:
                        report.ttft_ms[slot] = ttft
                        report.duration_ms[slot] = metrics.duration_ms
            if isinstance(end, End):
                kind = end.error.kind if end.error is not None else end.reason
                report.outcomes[str(kind)] += 1
                if end.error is not None and len(report.messages) < 1000:
                    report.messages[f"{kind}: {_DIGITS.sub('N', end.error.message)}"] += 1
            first = out.events[0] if out.events else None
            if isinstance(first, Started) and first.replica_id is not None:
                before = last_replica.get(session)
                if before is not None:
                    report.affinity_repeat += 1
                    report.affinity_kept += before == first.replica_id
                last_replica[session] = first.replica_id

        async def worker(pool: Pool) -> None:
            while pending[0] < opts.tasks:
                i = pending[0]
                pending[0] += 1
                session = f"s{rng.randrange(opts.sessions)}"
                cancel = rng.random() < opts.cancel_share
                replicas.top_up()
                await one(pool, i, session, cancel)
                done[0] += 1
                report.beat = trio.current_time()
                progress(pool)

        async def rebinder(pool: Pool, within: float) -> None:
            turn = 0
            at = trio.current_time()
            while True:
                at += opts.rebind_every  # a fixed cadence: a slow bind does not stretch it
                await trio.sleep_until(at)
                replica_id = REPLICAS[turn % len(REPLICAS)]
                turn += 1
                fresh = await replicas.start(replica_id)
                old = replicas.live[replica_id]
                bound = False
                try:
                    await pool.bind(replica_id, config_for(fresh, replica_id))
                    bound = True
                finally:
                    if not bound:  # cancelled at the end of the load, or the bind failed
                        replicas.stop(fresh)
                replicas.live[replica_id] = fresh
                replicas.retire(replica_id, old, within)
                report.rebinds += 1

        phase("opening the pool")
        async with open_pool(opts.mode, opts.seed) as (pool, drain):
            phase("binding")
            for replica_id in REPLICAS:
                await pool.bind(replica_id, config_for(replicas.live[replica_id], replica_id))
            progress(pool)
            async with trio.open_nursery() as load:
                load.start_soon(rebinder, pool, drain + RETIRE_GRACE)
                async with trio.open_nursery() as workers:
                    for _ in range(opts.concurrency):
                        workers.start_soon(worker, pool)
                load.cancel_scope.cancel()
            report.registries_at_end = pool.registries()
            report.registries_at_end["adapters.running"] = sum(
                adapter.statistics().running for adapter in live_adapters()
            )
            report.counters = pool.counters()
            phase("leaving the pool")
        del pool
        # The pool is left: its adapters are closed. The upstreams rebound from must go quiet
        # (each within its own bound), and the live ones see every connection closed.
        phase("waiting for the upstreams")
        await replicas.wait_retired()
        with trio.move_on_after(RETIRE_GRACE):
            for upstream in replicas.live.values():
                await upstream.wait_quiet()
        await trio.testing.wait_all_tasks_blocked()
        phase("after")
        report.after_tasks = trio_tasks()
        report.after = sample("after", None)
        echo(report.after.line(opts.tasks))
        report.checkpoints["after"] = deep_look(None)
        echo(f"[{'after':>8}] {report.checkpoints['after']}")
        report.failures.extend(replicas.failures)
        report.scripted = replicas.scripted()
        for upstream in list(replicas.scopes):
            replicas.stop(upstream)
    report.wall = time.monotonic() - wall_start


@asynccontextmanager
async def open_pool(mode: str, seed: int) -> AsyncIterator[tuple[Pool, float]]:
    """The pool under test and its drain timeout (seconds)."""
    if mode == "adapter":
        async with open_adapter_pool() as pool:
            yield pool, TIMEOUTS.total
        return
    if mode != "host":
        raise ValueError(f"unknown mode {mode!r}")
    async with AdapterHost(POLICY) as host:
        host.rng.seed(seed)
        yield HostPool(host), POLICY.drain_timeout


# --- output ------------------------------------------------------------------------------


def summary(report: Report) -> list[str]:
    opts = report.options
    lines = []
    total = sum(report.outcomes.values())
    parts = ", ".join(f"{k} {v:,} ({v / total:.1%})" for k, v in report.outcomes.most_common())
    lines.append(f"outcomes: {parts}")
    scripted = ", ".join(f"{k} {v:,}" for k, v in report.scripted.most_common())
    lines.append(f"answers scripted on the upstreams (incl. unused ahead): {scripted}")
    if report.duration_ms:
        ttft, dur = sorted(report.ttft_ms), sorted(report.duration_ms)
        lines.append(
            f"finished tasks: TTFT p50 {_pct(ttft, 50):.0f} ms, p99 {_pct(ttft, 99):.0f} ms; "
            f"duration p50 {_pct(dur, 50):.0f} ms, p99 {_pct(dur, 99):.0f} ms; "
            f"{report.finished / report.wall:.0f} tasks/s over {report.wall:.0f} s"
        )
    counters = ", ".join(f"{k} {v:,}" for k, v in report.counters.items())
    lines.append(f"pool ({opts.mode}): {counters}; rebinds {report.rebinds}")
    if report.affinity_repeat:
        lines.append(
            f"affinity: {report.affinity_kept / report.affinity_repeat:.1%} of "
            f"{report.affinity_repeat:,} repeat-session tasks served by the session's previous replica"
        )
    for message, count in report.messages.most_common(8):
        lines.append(f"  {count:7,} × {message[:160]}")
    for label, look in report.checkpoints.items():
        lines.append(f"at {label}: {look}")
    for example in report.examples:
        lines.append(f"violation: {example}")
    return lines


def _pct(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def verdict_line(report: Report, reasons: Sequence[str]) -> str:
    opts = report.options
    if reasons:
        return "FAIL: " + "; ".join(reasons)
    first, last = report.at(0.2), report.at(1.0)
    growth = f"{last.rss / first.rss - 1:+.1%}" if first and last else "n/a"
    base, after = report.baseline, report.after
    assert base is not None
    assert after is not None
    return (
        f"PASS: 0 violations in {opts.tasks:,} tasks in {report.wall:.0f} s; RSS {growth} from "
        f"20 % to 100 % (≤ {RSS_GROWTH_LIMIT:.0%}); after the pool fds {base.fds} → {after.fds}, "
        f"tasks {base.tasks} → {after.tasks}, connections {after.connections}; registries empty"
    )


def write_outputs(report: Report, out_dir: str, title: str) -> str:
    """The samples as CSV and the plot as PNG; returns the PNG's path."""
    os.makedirs(out_dir, exist_ok=True)
    rows = [s for s in (report.baseline, *report.samples, report.after) if s is not None]
    with open(os.path.join(out_dir, "soak.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["label", "done", "t", "rss", "fds", "sockets", "tasks", "registries", "connections"]
        )
        for s in rows:
            writer.writerow(
                [
                    s.label,
                    s.done,
                    f"{s.t:.3f}",
                    s.rss,
                    s.fds,
                    s.sockets,
                    s.tasks,
                    s.registries,
                    s.connections,
                ]
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s.done for s in report.samples]
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    panels: list[tuple[str, Callable[[Sample], float]]] = [
        ("RSS (MiB)", lambda s: s.rss / 2**20),
        ("open fds", lambda s: s.fds),
        ("trio tasks", lambda s: s.tasks),
    ]
    base, after = report.baseline, report.after
    for ax, (name, get) in zip(axes, panels, strict=True):
        ax.plot(xs, [get(s) for s in report.samples], lw=1.2)
        if base is not None:
            ax.axhline(get(base), color="grey", ls=":", lw=1, label="baseline (before the pool)")
        if after is not None:
            ax.plot([xs[-1]], [get(after)], "o", color="tab:green", label="after the pool")
        for share in (0.2, 0.5):
            ax.axvline(share * report.options.tasks, color="lightgrey", lw=0.8)
        ax.set_ylabel(name)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("tasks ended")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, "soak.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TASKS:,} tasks")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--rebind-every", type=float, default=REBIND_EVERY)
    parser.add_argument("--out", default=os.path.join(ROOT, ".soak-out"))
    parser.add_argument("--adapter", action="store_true", help="the stand-in pool of adapters")
    args = parser.parse_args(argv)
    tasks = args.tasks or (QUICK_TASKS if args.quick else TASKS)
    opts = Options(
        tasks=tasks,
        concurrency=args.concurrency,
        seed=args.seed,
        rebind_every=args.rebind_every,
        mode="adapter" if args.adapter else "host",
    )
    faults = ", ".join(f"{k} {v} %" for k, v in FAULTS.items())
    print(
        f"soak: {tasks:,} tasks, {opts.concurrency} at a time, {opts.mode} over "
        f"{len(REPLICAS)} replicas, {opts.sessions:,} sessions, {opts.cancel_share:.0%} "
        f"cancelled after the first token, a rebind every {opts.rebind_every} s, "
        f"answers {faults}, seed {opts.seed}; load average {_load()}",
        flush=True,
    )
    report = trio.run(soak, opts)
    reasons = verdict(report)
    for line in summary(report):
        print(line)
    print(f"load average at the end: {_load()}")
    line = verdict_line(report, reasons)
    first, last = report.at(0.2), report.at(1.0)
    growth = f"RSS {last.rss / first.rss - 1:+.1%} from 20 % to 100 %" if first and last else ""
    title = (
        f"soak ({opts.mode}): {'FAIL' if reasons else 'PASS'} — {tasks:,} tasks in "
        f"{report.wall:.0f} s, {report.violations} violations, {growth}"
    )
    png = write_outputs(report, args.out, title)
    print(f"plot: {png}")
    print(line)
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())

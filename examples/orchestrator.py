"""A small orchestrator on an `AdapterHost`: the shape of a real one, in one file.

- a **queue** of jobs (a bounded trio memory channel) fed by a producer;
- several **workers**, each taking a job, submitting it to the pool and reading its stream;
- an **AdapterHost** with three replicas of one model, here on embedded test servers
  (`oai_adapter.testing.FakeUpstream` on 127.0.0.1) — in production, three engine servers;
- a **deadline** per job, enforced the documented way: `host.cancel(pool, job_id)` when it
  passes, then the worker reads the stream to its `End(cancelled)`;
- a **replica restarted mid-run**: a new server comes up for "gpu-1" and the host is told with
  `bind` again (a rebind); jobs on the old server finish there, new jobs go to the new one;
- **cancel on shutdown**: when the orchestrator is told to stop, it stops taking jobs and
  cancels the ones still running; every worker ends its stream before the host is closed.

Run it with `just example` (or `uv run python examples/orchestrator.py --help`). It prints one
line per job and the host's statistics; `tests/test_host_example.py` runs it in-process.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from oai_adapter import (
    AdapterConfig,
    AdapterHost,
    End,
    HostPolicy,
    RetryPolicy,
    Started,
    TaskRequest,
    Timeouts,
)
from oai_adapter.testing import FakeUpstream

POOL = "chat-8b"
REPLICAS = ("gpu-0", "gpu-1", "gpu-2")


@dataclass(frozen=True)
class Job:
    job_id: str
    prompt: str
    deadline_s: float  # the orchestrator's promise to its caller, not the adapter's timeouts
    session_id: str | None = None


@dataclass
class Report:
    """What happened to each job: `outcomes[job_id]` is "stop", "deadline", "shutdown" or an
    error kind; `served_by` counts jobs per replica (from `Started.replica_id`)."""

    outcomes: dict[str, str] = field(default_factory=dict)
    served_by: Counter[str] = field(default_factory=Counter)
    running: set[str] = field(default_factory=set)
    rebound_at_job: int | None = None
    finished: int = 0
    _milestones: dict[int, trio.Event] = field(default_factory=dict)

    def summary(self) -> Counter[str]:
        return Counter(self.outcomes.values())

    def job_finished(self) -> None:
        self.finished += 1
        milestone = self._milestones.pop(self.finished, None)
        if milestone is not None:
            milestone.set()

    async def wait_finished(self, count: int) -> None:
        """Wait until `count` jobs have finished."""
        if self.finished < count:
            await self._milestones.setdefault(count, trio.Event()).wait()


def config_for(server: FakeUpstream) -> AdapterConfig:
    return AdapterConfig(
        base_url=server.base_url,
        model=server.model,
        timeouts=Timeouts(connect=2.0, first_token=5.0, idle=5.0, total=30.0),
        retry=RetryPolicy(max_attempts=2, base=0.05, cap=0.5),
    )


async def run_job(host: AdapterHost, job: Job, report: Report) -> None:
    """Submit one job and read it to its End; cancel it when its deadline passes."""
    req = TaskRequest(task_id=job.job_id, prompt=job.prompt, session_id=job.session_id)
    deadline_passed = False
    served_by = "-"

    async def enforce_deadline() -> None:
        nonlocal deadline_passed
        await trio.sleep(job.deadline_s)
        deadline_passed = host.cancel(POOL, job.job_id)

    report.running.add(job.job_id)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(enforce_deadline)
            async with host.submit(POOL, req) as events:
                async for event in events:
                    if isinstance(event, Started):
                        served_by = event.replica_id or "?"
                        report.served_by[served_by] += 1
                    elif isinstance(event, End):
                        if event.reason == "cancelled":
                            outcome = "deadline" if deadline_passed else "shutdown"
                        elif event.error is not None:
                            outcome = event.error.kind.value
                        else:
                            outcome = event.reason
                        report.outcomes[job.job_id] = outcome
                        print(
                            f"{job.job_id}  {served_by:<6} {outcome:<16} {event.tokens_out:3d} tokens"
                        )
            nursery.cancel_scope.cancel()
    finally:
        report.running.discard(job.job_id)
        report.job_finished()


async def worker(
    host: AdapterHost,
    jobs: trio.MemoryReceiveChannel[Job],
    report: Report,
    shutting_down: trio.Event,
) -> None:
    async with jobs:
        async for job in jobs:
            if shutting_down.is_set():
                report.outcomes[job.job_id] = "not started"
                continue
            await run_job(host, job, report)


def make_jobs(count: int) -> list[Job]:
    jobs = []
    for i in range(count):
        # every 8th job promises an answer sooner than the servers can stream it
        deadline = 0.05 if i % 8 == 7 else 10.0
        jobs.append(
            Job(f"job-{i:03d}", f"Question {i}", deadline_s=deadline, session_id=f"user-{i % 5}")
        )
    return jobs


async def orchestrate(
    *, jobs: int = 24, workers: int = 4, pace: float = 0.01, stop_after: int | None = None
) -> Report:
    """Run the whole orchestrator; returns what happened. `stop_after`: shut down once that many
    jobs have finished (default: three quarters of them), cancelling the ones still running."""
    stop_after = stop_after if stop_after is not None else jobs * 3 // 4
    report = Report()
    shutting_down = trio.Event()
    servers = {name: FakeUpstream(pace=pace, slots=2) for name in REPLICAS}
    async with trio.open_nursery() as servers_nursery:
        for server in servers.values():
            await servers_nursery.start(server.serve)

        async with AdapterHost(HostPolicy(drain_timeout=5.0, probe_interval=1.0)) as host:
            for name, server in servers.items():
                await host.bind(POOL, name, config_for(server))
            caps = host.capabilities()[POOL]
            print(
                f"pool {POOL}: {caps.replicas_ready}/{caps.replicas_total} replicas ready, "
                f"{caps.slots_total} slots, engines {', '.join(caps.engines) or '?'}"
            )

            send, receive = trio.open_memory_channel[Job](workers)  # bounded: backpressure

            async def produce() -> None:
                async with send:
                    for job in make_jobs(jobs):
                        if shutting_down.is_set():
                            report.outcomes[job.job_id] = "not started"
                            continue
                        await send.send(job)

            async def restart_gpu1() -> None:
                """Mid-run, gpu-1's engine comes back on a new server: rebind it."""
                await report.wait_finished(jobs // 3)
                fresh = FakeUpstream(pace=pace, slots=2)
                await servers_nursery.start(fresh.serve)
                await host.bind(POOL, "gpu-1", config_for(fresh))  # returns once fresh serves
                report.rebound_at_job = report.finished
                print(f"-- gpu-1 restarted at {fresh.base_url}; the old server drains")

            async def shut_down_after() -> None:
                """Told to stop: take no more jobs, cancel the running ones."""
                await report.wait_finished(stop_after)
                shutting_down.set()
                print(f"-- shutting down: cancelling {len(report.running)} running job(s)")
                for job_id in sorted(report.running):
                    host.cancel(POOL, job_id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(restart_gpu1)
                nursery.start_soon(shut_down_after)
                async with trio.open_nursery() as staff:
                    staff.start_soon(produce)
                    for _ in range(workers):
                        staff.start_soon(worker, host, receive.clone(), report, shutting_down)
                    await receive.aclose()
                nursery.cancel_scope.cancel()  # restart/shutdown watchers, if still waiting

            stats = host.statistics().pools[POOL]
            print(
                f"host: {stats.submitted} submitted, {stats.failovers} failovers, "
                f"{stats.budget_refused} retries refused by the budget"
            )
            for replica_id, rs in sorted(stats.replicas.items()):
                print(f"  {replica_id}: {rs.submitted} tasks, breaker {rs.breaker}")
        servers_nursery.cancel_scope.cancel()
    summary = ", ".join(f"{n} {what}" for what, n in sorted(report.summary().items()))
    print(f"jobs: {summary}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pace", type=float, default=0.01, help="seconds between tokens")
    args = parser.parse_args(argv)
    report = trio.run(lambda: orchestrate(jobs=args.jobs, workers=args.workers, pace=args.pace))
    return 0 if report.outcomes else 1


if __name__ == "__main__":
    sys.exit(main())

"""The steps of the host's features (`tests/features/*.feature`), in the words the features use.

Each scenario runs against real test servers on loopback (`FakeUpstream`) and a real
`AdapterHost`, one step at a time (`stepper.Stepper`: the clock stands still between steps).
`Given` steps declare the pool and its scripts, `When` steps act on the running host, `Then`
steps check what was recorded — waiting, within the step's deadline, for a stream still running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import trio
from pytest_bdd import given, parsers, scenarios, then, when

from oai_adapter import End, ErrorKind, Metrics, RetryPolicy, Started, Token
from oai_adapter.testing import Fault, Reply, check_stream

from .pool import POOL, TaskRecord, World

scenarios(".")

#: The longest loop of "submitted one after another until …" (a random tie-break picks the
#: wanted replica half the time: 64 misses in a row do not happen).
MAX_TASKS = 64

FAULTS: dict[str, Reply] = {
    "answers 503": Fault.status(503),
    "resets the connection before the headers": Fault.reset_before_headers(),
    "resets the connection after the headers": Fault.reset_after(None),
}


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()


def _names(text: str) -> list[str]:
    """`"a", "b" and "c"` -> ["a", "b", "c"]."""
    return [part.strip().strip('"') for part in text.replace(" and ", ", ").split(",")]


def _started(record: TaskRecord) -> Started:
    started = [ev for ev in record.events if isinstance(ev, Started)]
    assert len(started) == 1, f"{record.task_id}: {len(started)} Started events"
    return started[0]


# --- Given ----------------------------------------------------------------------------------


@given(parsers.parse('a pool "{pool}" of the replicas {names}'))
def _pool_of(world: World, pool: str, names: str) -> None:
    assert pool == POOL
    for name in _names(names):
        world.add_replica(name)


@given(parsers.parse('a pool "{pool}" with one replica "{replica}" on the server "{server}"'))
def _pool_with_one(world: World, pool: str, replica: str, server: str) -> None:
    assert pool == POOL
    world.add_server(server)
    world.add_replica(replica, server)


@given(parsers.parse('a second server "{server}" serving the same model'))
def _second_server(world: World, server: str) -> None:
    world.add_server(server)


@given(parsers.parse("the drain timeout is {seconds:g} seconds"))
def _drain_timeout(world: World, seconds: float) -> None:
    world.policy["drain_timeout"] = seconds


@given("each replica makes one attempt per task")
def _one_attempt(world: World) -> None:
    world.retry = RetryPolicy(max_attempts=1)


@given(parsers.parse("each replica makes up to {n:d} attempts per task"))
def _attempts(world: World, n: int) -> None:
    world.retry = RetryPolicy(max_attempts=n, base=0.01, cap=0.05)


@given(parsers.parse("the host fails a task over at most {n:d} times"))
def _max_failovers(world: World, n: int) -> None:
    world.policy["max_failovers"] = n


@given(
    parsers.parse(
        "a breaker opens after {n:d} consecutive failures, for {seconds:g} seconds at first"
    )
)
def _breaker(world: World, n: int, seconds: float) -> None:
    world.policy.update(breaker_failures=n, breaker_open=seconds)


@given("the breakers are set never to open")
def _no_breaker(world: World) -> None:
    world.policy["breaker_failures"] = 1_000_000


@given(parsers.parse("the retry budget is {percent:g} percent of submitted tasks, with no reserve"))
def _budget(world: World, percent: float) -> None:
    world.policy.update(budget_percent=percent, budget_min_per_s=0.0)


@given("every server streams its tokens slowly")
def _all_slow(world: World) -> None:
    for upstream in world.servers.values():
        upstream.pace = 0.05


@given(parsers.parse('the server "{server}" streams its tokens slowly'))
def _slow(world: World, server: str) -> None:
    world.servers[server].pace = 0.1  # 24 tokens: 2.4 s, within the drain timeout


@given(parsers.parse("every server streams {n:d} tokens and then waits"))
def _all_stall(world: World, n: int) -> None:
    for upstream in world.servers.values():
        upstream.script(Fault.stall_after(n))


@given(parsers.parse('the server "{server}" streams {n:d} tokens and then waits'))
def _stall(world: World, server: str, n: int) -> None:
    world.servers[server].script(Fault.stall_after(n))


@given("every server answers every task with 503")
def _all_503(world: World) -> None:
    for upstream in world.servers.values():
        upstream.script(*[Fault.status(503)] * 500)


@given(parsers.parse('the server of "{replica}" answers its next {n:d} tasks with 503'))
def _next_503(world: World, replica: str, n: int) -> None:
    world.server_of(replica).script(*[Fault.status(503)] * n)


@given(parsers.parse('the first replica that task "{task}" meets {fault}'))
def _first_meets(world: World, task: str, fault: str) -> None:
    if fault.startswith("resets the connection after ") and fault.endswith(" tokens"):
        reply = Fault.reset_after(int(fault.split()[-2]))
    else:
        reply = FAULTS[fault]
    world.share_task_scripts()
    next(iter(world.servers.values())).script_for(task, reply)


@given(parsers.parse('the first {n:d} replicas that task "{task}" meets answer 503'))
def _first_n_meet(world: World, n: int, task: str) -> None:
    world.share_task_scripts()
    next(iter(world.servers.values())).script_for(task, *[Fault.status(503)] * n)


# --- When -----------------------------------------------------------------------------------


@when(parsers.parse("{n:d} tasks are submitted together and each is read to its end"))
def _submit_together(world: World, n: int) -> None:
    _submit_in_parallel(world, n, n)


@when(parsers.parse("{n:d} tasks are submitted, {k:d} at a time, and each is read to its end"))
def _submit_many(world: World, n: int, k: int) -> None:
    _submit_in_parallel(world, n, k)


def _submit_in_parallel(world: World, n: int, k: int) -> None:
    ids = [world.new_task_id() for _ in range(n)]
    world.batch = ids

    async def storm() -> None:
        limit = trio.Semaphore(k)

        async def one(task_id: str) -> None:
            async with limit:
                await world.consume(task_id)

        async with trio.open_nursery() as nursery:
            for task_id in ids:
                nursery.start_soon(one, task_id)

    world.run(storm)


@when(parsers.parse('task "{task}" is submitted'))
def _submit_background(world: World, task: str) -> None:
    world.start_task(task)


@when(parsers.parse('task "{task}" is submitted and read to its end'))
def _submit_and_read(world: World, task: str) -> None:
    world.run(lambda: world.consume(task))


@when(parsers.parse('task "{task}" has received {n:d} token'))
@when(parsers.parse('task "{task}" has received {n:d} tokens'))
def _has_received(world: World, task: str, n: int) -> None:
    async def received() -> None:
        await world.wait_until(lambda: len(world.tasks[task].tokens) >= n)

    world.run(received)


@when(parsers.parse('task "{task}" is read to its end'))
def _read_to_end(world: World, task: str) -> None:
    world.wait_for_end(task)


@when(parsers.parse('the orchestrator cancels task "{task}"'))
def _cancel(world: World, task: str) -> None:
    async def cancel() -> bool:
        return world.host.cancel(POOL, task)

    world.results["cancel"] = world.run(cancel)


@when(parsers.parse('"{replica}" is rebound to the server "{server}"'))
def _rebind(world: World, replica: str, server: str) -> None:
    async def rebind() -> None:
        await world.host.bind(POOL, replica, world.config(server))
        world.marks["rebind"] = trio.current_time()

    world.run(rebind)
    world.replicas[replica] = server


@when(parsers.parse("{seconds:g} seconds pass"))
def _time_passes(world: World, seconds: float) -> None:
    async def wait() -> None:
        await trio.sleep(seconds)

    world.run(wait, sleeps=seconds)


def _one_after_another(world: World, done: Callable[[], bool]) -> None:
    ids: list[str] = []
    world.batch = ids

    async def loop() -> None:
        for _ in range(MAX_TASKS):
            task_id = world.new_task_id()
            ids.append(task_id)
            await world.consume(task_id)
            if done():
                return
        raise AssertionError(f"not done after {MAX_TASKS} tasks")

    world.run(loop)


@when(
    parsers.parse(
        'tasks are submitted one after another until "{replica}" has failed {n:d} of them'
    )
)
def _until_failed(world: World, replica: str, n: int) -> None:
    server = world.server_of(replica)  # it fails every task it receives (scripted 503s)
    _one_after_another(world, lambda: len(server.completion_requests()) >= n)


@when(parsers.parse('tasks are submitted one after another until one is served by "{replica}"'))
def _until_served_by(world: World, replica: str) -> None:
    def served() -> bool:
        return _started(world.tasks[world.batch[-1]]).replica_id == replica

    _one_after_another(world, served)


@when(parsers.parse("{n:d} more tasks are submitted one after another"))
def _more_tasks(world: World, n: int) -> None:
    ids = [world.new_task_id() for _ in range(n)]
    world.batch = ids

    async def loop() -> None:
        for task_id in ids:
            await world.consume(task_id)

    world.run(loop)


# --- Then -----------------------------------------------------------------------------------


def _check_full_stream(world: World, record: TaskRecord, *, attempt: int | None = None) -> None:
    tokens = next(iter(world.servers.values())).tokens
    end = check_stream(record.events, tokens=tokens)
    assert end.reason == "stop", f"{record.task_id}: {end!r}"
    assert record.tokens == tokens, f"{record.task_id}: not every token"
    assert isinstance(record.events[0], Started)
    assert isinstance(record.events[-2], Metrics)
    if attempt is not None:
        assert _started(record).attempt == attempt


@then(parsers.parse('every task streams Started, its tokens in order, Metrics and End "stop"'))
def _every_task_full(world: World) -> None:
    assert world.batch
    for task_id in world.batch:
        _check_full_stream(world, world.tasks[task_id])


@then(parsers.parse('task "{task}" streams Started, its tokens in order, Metrics and End "stop"'))
def _task_full(world: World, task: str) -> None:
    _check_full_stream(world, world.wait_for_end(task))


@then(
    parsers.parse(
        'task "{task}" streams one Started, with attempt {attempt:d}, its tokens in order, '
        'Metrics and End "stop"'
    )
)
def _task_full_attempt(world: World, task: str, attempt: int) -> None:
    _check_full_stream(world, world.wait_for_end(task), attempt=attempt)


@then("each task's Started names the replica whose server received the task")
def _started_names_server(world: World) -> None:
    for task_id in world.batch:
        replica = _started(world.tasks[task_id]).replica_id
        assert replica in world.replicas, f"{task_id}: Started.replica_id {replica!r}"
        assert world.received_by(task_id) == {world.replicas[replica]: 1}


@then(parsers.parse("the load is spread: each replica serves {n:d} of the tasks"))
def _spread(world: World, n: int) -> None:
    served = [_started(world.tasks[t]).replica_id for t in world.batch]
    assert {r: served.count(r) for r in world.replicas} == dict.fromkeys(world.replicas, n)


@then("the cancel is accepted")
def _cancel_accepted(world: World) -> None:
    assert world.results["cancel"] is True


@then(parsers.parse('the next event of task "{task}" after its tokens is End "cancelled"'))
def _next_is_cancelled(world: World, task: str) -> None:
    record = world.wait_for_end(task)
    check_stream(record.events)
    tail = record.events[record.events.index(_started(record)) + 1 :]
    n = len(record.tokens)
    assert all(isinstance(ev, Token) for ev in tail[:n])
    assert len(tail) == n + 1, f"after the tokens: {tail[n:]!r}"
    end = tail[n]
    assert isinstance(end, End)
    assert end.reason == "cancelled"


def _serving_server(world: World, task: str) -> str:
    replica = _started(world.tasks[task]).replica_id
    assert replica is not None
    return world.replicas[replica]


@then(parsers.parse('the server of the replica serving task "{task}" sees its client go away'))
def _serving_disconnected(world: World, task: str) -> None:
    upstream = world.servers[_serving_server(world, task)]
    world.run(upstream.disconnected.wait)
    assert upstream.disconnects == 1


@then(parsers.parse('no other server received task "{task}"'))
def _no_other_server(world: World, task: str) -> None:
    assert world.received_by(task) == {_serving_server(world, task): 1}


@then(parsers.parse('task "{task}" is served by a replica other than the first one it met'))
def _served_by_other(world: World, task: str) -> None:
    world.wait_for_end(task)
    serving = _serving_server(world, task)
    received = world.received_by(task)
    assert sorted(received.values()) == [1, 1], received
    assert serving in received


@then(parsers.parse('task "{task}" is served by the one replica that had not failed it'))
def _served_by_last(world: World, task: str) -> None:
    world.wait_for_end(task)
    received = world.received_by(task)
    assert received == dict.fromkeys(world.servers, 1), "a replica was tried twice or never"
    assert _serving_server(world, task) in received


@then(parsers.parse('task "{task}" is served by "{replica}"'))
def _served_by(world: World, task: str, replica: str) -> None:
    assert _started(world.wait_for_end(task)).replica_id == replica


@then(parsers.parse("the pool has counted {n:d} failover"))
@then(parsers.parse("the pool has counted {n:d} failovers"))
def _failovers(world: World, n: int) -> None:
    assert world.host.statistics().pools[POOL].failovers == n


@then("the pool has counted budget refusals")
def _budget_refusals(world: World) -> None:
    assert world.host.statistics().pools[POOL].budget_refused > 0


def _check_error(record: TaskRecord, kind: str, *, retryable: bool | None = None) -> End:
    end = check_stream(record.events)
    assert end.reason == "error", f"{record.task_id}: {end!r}"
    assert end.error is not None
    assert end.error.kind is ErrorKind(kind), f"{record.task_id}: {end.error!r}"
    if retryable is not None:
        assert end.error.retryable is retryable
    return end


@then(parsers.parse('task "{task}" ends with only End, error "{kind:w}", retryable'))
def _only_end(world: World, task: str, kind: str) -> None:
    record = world.wait_for_end(task)
    assert len(record.events) == 1, record.events
    _check_error(record, kind, retryable=True)


@then(parsers.parse('every task ends with only End, error "{kind:w}", retryable'))
def _every_only_end(world: World, kind: str) -> None:
    assert world.batch
    for task_id in world.batch:
        record = world.tasks[task_id]
        assert len(record.events) == 1, record.events
        _check_error(record, kind, retryable=True)


@then(parsers.parse('every server received task "{task}" once'))
def _every_server_once(world: World, task: str) -> None:
    assert world.received_by(task) == dict.fromkeys(world.servers, 1)


@then(parsers.parse('only one server received task "{task}"'))
def _only_one_server(world: World, task: str) -> None:
    received = world.received_by(task)
    assert list(received.values()) == [1], received


def _shape(record: TaskRecord) -> list[str]:
    return [type(ev).__name__ for ev in record.events]


@then(
    parsers.parse('task "{task}" streams Started, {n:d} tokens, Metrics and End error "{kind:w}"')
)
def _partial_error(world: World, task: str, n: int, kind: str) -> None:
    record = world.wait_for_end(task)
    assert _shape(record) == ["Started", *["Token"] * n, "Metrics", "End"]
    _check_error(record, kind)


@then(
    parsers.parse(
        'task "{task}" streams Started, {n:d} tokens, Metrics and End error "{kind:w}", '
        'retryable, saying "{words}"'
    )
)
def _partial_error_saying(world: World, task: str, n: int, kind: str, words: str) -> None:
    record = world.wait_for_end(task)
    assert _shape(record) == ["Started", *["Token"] * n, "Metrics", "End"]
    end = _check_error(record, kind, retryable=True)
    assert end.error is not None
    assert words in end.error.message, end.error.message


@then(parsers.parse('the server "{server}" received only task "{task}"'))
def _server_received_only(world: World, server: str, task: str) -> None:
    ids = [r.headers.get("x-correlation-id") for r in world.servers[server].completion_requests()]
    assert ids == [task]


@then(parsers.parse('the old adapter has closed its connections to the server "{server}"'))
def _old_closed(world: World, server: str) -> None:
    world.run(world.servers[server].wait_quiet)


@then(parsers.parse('the server "{server}" sees its client go away'))
def _server_disconnected(world: World, server: str) -> None:
    world.run(world.servers[server].disconnected.wait)


@then(parsers.parse('task "{task}" ends once the drain timeout has passed, not before'))
def _ends_after_drain(world: World, task: str) -> None:
    record = world.wait_for_end(task)
    assert record.ended_at is not None
    waited = record.ended_at - world.marks["rebind"]
    assert waited >= world.policy["drain_timeout"], f"ended {waited} s after the rebind"


@then(parsers.parse('every one of those tasks ended "{reason:w}"'))
def _those_ended(world: World, reason: str) -> None:
    assert world.batch
    for task_id in world.batch:
        end = world.tasks[task_id].end
        assert end is not None, task_id
        assert end.reason == reason, f"{task_id}: {end!r}"


@then(parsers.parse('"{replica}" served all {n:d} of them'))
def _served_all(world: World, replica: str, n: int) -> None:
    assert len(world.batch) == n
    assert {_started(world.tasks[t]).replica_id for t in world.batch} == {replica}


def _breaker_state(world: World, replica: str) -> str:
    state: str = world.host.statistics().pools[POOL].replicas[replica].breaker
    return state


@then(parsers.parse('the breaker of "{replica}" is open'))
def _breaker_open(world: World, replica: str) -> None:
    assert _breaker_state(world, replica) == "open"


@then(parsers.parse('the breaker of "{replica}" is half-open'))
def _breaker_half_open(world: World, replica: str) -> None:
    assert _breaker_state(world, replica) == "half_open"


@then(parsers.parse('the breaker of "{replica}" is closed'))
def _breaker_closed(world: World, replica: str) -> None:
    assert _breaker_state(world, replica) == "closed"


@then(parsers.parse("the servers received at most {n:d} requests in all"))
def _at_most_requests(world: World, n: int) -> None:
    total = sum(len(u.completion_requests()) for u in world.servers.values())
    assert len(world.batch) <= total <= n, f"{total} requests for {len(world.batch)} tasks"

"""What a running stream keeps: only what the stream needs (docs/performance.md, "Memory per
open stream"). Retries happen only before `Started`, so once a stream is accepted its reader
keeps neither the `TaskRequest`, nor the request body, nor the response's headers.

Checked from outside: everything reachable from the reader task (the one task the `submit`
block's nursery runs, found through trio's public task tree), walked with `gc.get_referents`
without crossing into other tasks, nurseries, modules, classes or functions; and, for the
`TaskRequest`, the whole heap (the test keeps no reference to it).
"""

from __future__ import annotations

import gc
import types
from collections.abc import Iterator

import trio
import trio.testing

from oai_adapter import OpenAIAdapter, Started, TaskRequest, Token
from oai_adapter.testing import FakeUpstream, Hang, Reply, Send, chat_chunk, sse

from .conftest import IO_DEADLINE

PROMPT_MARK = "prompt-only-attempts-need-7f3a"
HEAD_MARK = "head-only-accepting-needs-91c2"
TASK_ID = "t-reader-keeps-its-id-5d0e"

#: Not walked into: what is shared with other tasks or the whole process.
_STOP = (
    trio.lowlevel.Task,
    trio.Nursery,
    types.ModuleType,
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.CodeType,
)


def _reachable(root: object, limit: int = 200_000) -> Iterator[object]:
    seen = {id(root)}
    todo = [root]
    while todo and len(seen) < limit:
        obj = todo.pop()
        yield obj
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, _STOP):
                seen.add(id(ref))
                todo.append(ref)


def _texts(objs: Iterator[object]) -> Iterator[str]:
    for obj in objs:
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, bytes | bytearray):
            yield bytes(obj).decode("latin-1")


async def test_a_running_stream_keeps_neither_its_request_nor_the_response_head(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(
        Reply(
            headers=[("x-marker", HEAD_MARK)],
            steps=[Send(sse(chat_chunk("a"))), Hang()],
        )
    )
    me = trio.lowlevel.current_task()
    with trio.fail_after(IO_DEADLINE):
        before = set(me.child_nurseries)
        # No reference to the request here: only the adapter could keep it alive.
        async with adapter.submit(TaskRequest(task_id=TASK_ID, prompt=PROMPT_MARK)) as events:
            (nursery,) = set(me.child_nurseries) - before  # the submit block's
            (reader,) = nursery.child_tasks
            seen: list[type] = []
            async for event in events:
                seen.append(type(event))
                if isinstance(event, Token):
                    break
            assert seen == [Started, Token]
            gc.collect()
            reached = list(_reachable(reader.coro))
            texts = list(_texts(iter(reached)))
            assert any(TASK_ID in t for t in texts)  # the walk does reach the reader's state
            assert not [t for t in texts if PROMPT_MARK in t]  # no body, no TaskRequest
            assert not [t for t in texts if HEAD_MARK in t]  # no response headers
            # nor does anything else of the adapter (the `submit` block's own object included)
            assert not [o for o in gc.get_objects() if isinstance(o, TaskRequest)]


async def test_a_running_stream_reads_in_one_cancel_scope_that_cancel_reaches(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    # The task's `total`, the attempt's read deadlines and `cancel()` share one scope: trio keeps
    # a status and two sets for every scope entered (≈ 0.65 KB per open stream, docs/performance.md).
    upstream.script(Reply(steps=[Send(sse(chat_chunk("a"))), Hang()]))
    me = trio.lowlevel.current_task()
    with trio.fail_after(IO_DEADLINE):
        before = set(me.child_nurseries)
        async with adapter.submit(TaskRequest(task_id="one-scope", prompt="x")) as events:
            (nursery,) = set(me.child_nurseries) - before
            (reader,) = nursery.child_tasks
            async for event in events:
                if isinstance(event, Token):
                    break
            await trio.testing.wait_all_tasks_blocked()
            scopes: dict[int, trio.CancelScope] = {}
            coro: object = reader.coro
            while coro is not None:  # the reader's stack, frame by frame
                frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                for value in (frame.f_locals if frame is not None else {}).values():
                    if isinstance(value, trio.CancelScope):
                        scopes[id(value)] = value
                coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
            assert len(scopes) == 1
            (scope,) = scopes.values()
            assert scope.deadline < float("inf")  # the idle deadline, or `total`
            assert adapter.cancel("one-scope")
            assert scope.cancel_called  # the scope `cancel()` reaches is the one it reads in

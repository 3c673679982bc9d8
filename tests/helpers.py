"""Helpers shared by the I/O tests: collecting a task's events and checking its grammar."""

from __future__ import annotations

import trio

from oai_adapter import OpenAIAdapter, TaskRequest, Token
from oai_adapter._events import Event
from oai_adapter.testing import check_stream as check_grammar

from .conftest import IO_DEADLINE

__all__ = ["check_grammar", "collect", "text_of"]


async def collect(adapter: OpenAIAdapter, req: TaskRequest | str = "t-1") -> list[Event]:
    """Every event of one task, under `IO_DEADLINE`; a `str` is a task id asking "hi"."""
    if isinstance(req, str):
        req = TaskRequest(task_id=req, prompt="hi")
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(req) as events:
            return [ev async for ev in events]


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))

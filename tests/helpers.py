"""Helpers shared by the I/O tests: collecting a task's events and checking its grammar, and
our HTTP/1.1 transport with test settings."""

from __future__ import annotations

import trio

from oai_adapter import OpenAIAdapter, TaskRequest, Token
from oai_adapter._events import Event
from oai_adapter._h11transport import H11Transport
from oai_adapter._tls import shared_ssl_context
from oai_adapter.testing import check_stream as check_grammar

from .conftest import IO_DEADLINE

__all__ = ["check_grammar", "collect", "make_transport", "text_of"]


def make_transport(max_connections: int = 10, **kw: object) -> H11Transport:
    """An `H11Transport` with 5 s connect and write timeouts, keeping every connection idle up
    to `max_connections`; `kw` overrides any option."""
    options: dict[str, object] = {
        "ssl_context": shared_ssl_context(),
        "connect_timeout": 5.0,
        "write_timeout": 5.0,
        "max_connections": max_connections,
        "max_keepalive": max_connections,
        **kw,
    }
    return H11Transport(**options)  # type: ignore[arg-type]


async def collect(adapter: OpenAIAdapter, req: TaskRequest | str = "t-1") -> list[Event]:
    """Every event of one task, under `IO_DEADLINE`; a `str` is a task id asking "hi"."""
    if isinstance(req, str):
        req = TaskRequest(task_id=req, prompt="hi")
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(req) as events:
            return [ev async for ev in events]


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))

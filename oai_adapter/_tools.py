"""Tool-call deltas: the bookkeeping both mappers share. Sans-IO (no trio, no httpx2).

Upstreams announce a call once (its id and name) and then stream its arguments as text
fragments: chat in `delta.tool_calls[]` keyed by an `index`, Responses in
`response.function_call_arguments.delta` keyed by the output item's id. `ToolCalls` turns
both into `ToolCallDelta` events with *our* index — 0, 1, … in order of first appearance — and
repeats the call's id and name on every delta, so a consumer can group by `index` without
keeping its own table.

Quirks handled: a server that sends parallel calls all under upstream index 0 with different
ids (Gemini's OpenAI-compatible endpoint does) gets one index per id; a `…arguments.done` whose
text extends what the deltas said (a server that skipped some deltas) has the missing tail
emitted, so the joined fragments always equal the final arguments when the upstream gives them.

Memory: a call keeps what it has said as a length and a running CRC-32 of its text, never the
fragments themselves, so a call streamed as two million one-character fragments costs the same
few dozen bytes as one of ten (a list of the fragments cost ~64 B each for the task's life). The
`…done` check compares the final arguments' prefix of that length by its CRC: a server whose final
text differs from its deltas in that prefix yet matches the CRC (a 2⁻³² chance) would have a tail
emitted after a different prefix — the same outcome as a server that says two different things.
The table of calls is bounded too: an answer may hold at most `MAX_CALLS` calls (OpenAI allows
128 parallel calls per response); an upstream inventing more ends the stream as PROTOCOL instead
of growing the table by one entry per made-up call id.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable
from typing import Final

from ._errors import ProtocolError
from ._events import Event, ToolCallDelta

__all__ = ["MAX_CALLS", "ToolCalls"]

#: Most tool calls one answer may hold: 8 × OpenAI's limit of 128 parallel calls per response.
MAX_CALLS: Final = 1024


class _Call:
    __slots__ = ("call_id", "index", "name", "said_crc", "said_len")

    def __init__(self, index: int) -> None:
        self.index = index
        self.call_id: str | None = None
        self.name: str | None = None
        self.said_len = 0  # characters of arguments emitted so far
        self.said_crc = 0  # their running CRC-32 (UTF-8, lone surrogates passed through)

    def said(self, fragment: str) -> None:
        self.said_len += len(fragment)
        self.said_crc = zlib.crc32(_utf8(fragment), self.said_crc)

    def extends(self, arguments: str) -> bool:
        """True when `arguments` is longer than what was said and starts with it."""
        n = self.said_len
        return len(arguments) > n and zlib.crc32(_utf8(arguments[:n])) == self.said_crc


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


class ToolCalls:
    """The calls of one answer, keyed by the upstream's own key for a call."""

    __slots__ = ("_by_key", "count", "task_id")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self._by_key: dict[Hashable, _Call] = {}
        self.count = 0  # calls seen

    def delta(
        self,
        key: Hashable,
        out: list[Event],
        *,
        call_id: str | None = None,
        name: str | None = None,
        arguments: str | None = None,
    ) -> None:
        """An upstream delta of the call under `key`: a `ToolCallDelta` when it says anything
        new (the call itself, its id or name, or an arguments fragment)."""
        call = self._by_key.get(key)
        changed = False
        if call is None or (call_id and call.call_id and call_id != call.call_id):
            if self.count >= MAX_CALLS:
                raise ProtocolError(f"more than {MAX_CALLS} tool calls in one answer")
            call = self._by_key[key] = _Call(self.count)
            self.count += 1
            changed = True
        if call_id and call_id != call.call_id:
            call.call_id = call_id
            changed = True
        if name and name != call.name:
            call.name = name
            changed = True
        if arguments:
            call.said(arguments)
        elif not changed:
            return
        out.append(
            ToolCallDelta(
                task_id=self.task_id,
                index=call.index,
                call_id=call.call_id,
                name=call.name,
                arguments=arguments or "",
            )
        )

    def done(self, key: Hashable, arguments: str | None, out: list[Event]) -> None:
        """The upstream's final arguments for the call under `key`: emit what the deltas missed."""
        call = self._by_key.get(key)
        if call is None:
            self.delta(key, out, arguments=arguments)
            return
        if not arguments:
            return
        if call.extends(arguments):
            self.delta(key, out, arguments=arguments[call.said_len :])

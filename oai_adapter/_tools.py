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
"""

from __future__ import annotations

from collections.abc import Hashable

from ._events import Event, ToolCallDelta

__all__ = ["ToolCalls"]


class _Call:
    __slots__ = ("arguments", "call_id", "index", "name")

    def __init__(self, index: int) -> None:
        self.index = index
        self.call_id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []  # the fragments emitted so far


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
            call.arguments.append(arguments)
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
        said = "".join(call.arguments)
        if len(arguments) > len(said) and arguments.startswith(said):
            self.delta(key, out, arguments=arguments[len(said) :])

"""Playing a plan's steps on a wire: the one loop both test upstreams run.

`play(steps, wire)` walks the steps — pauses, gates, a hang and its drip are the same on every
wire — and asks the `Wire` (one response on an HTTP/1.1 connection or on an HTTP/2 stream) to do
what only it knows how: send bytes, reset, GOAWAY, new settings. So the two front-ends differ in
what a step does on their wire, never in which steps they play or in what order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from ._script import Gate, GoAway, Hang, Reset, ResetStream, Send, Sleep, Step, UpdateSettings

__all__ = ["Wire", "play"]


class Wire(Protocol):
    """One response on its wire (before its status line when the front-end says so)."""

    async def send(self, data: bytes, *, last: bool) -> None:
        """Send `data`; `last`: nothing follows it in these steps."""

    def reset_connection(self) -> None:
        """Drop the connection with a TCP RST once what was sent has gone."""

    def reset_stream(self, error_code: int) -> None:
        """Reset this response alone, where the wire can."""

    def go_away(self, step: GoAway) -> None:
        """Take no more requests on this connection."""

    def update_settings(self, step: UpdateSettings) -> None:
        """Change the connection's settings, where the wire has any."""


async def play(steps: Sequence[Step], wire: Wire) -> bool:
    """Play `steps` on `wire`. False: a reset ended the response (nothing may follow)."""
    for i, step in enumerate(steps):
        if isinstance(step, Send):
            await wire.send(step.data, last=i == len(steps) - 1)
        elif isinstance(step, Sleep):
            await trio.sleep(step.seconds)
        elif isinstance(step, Gate):
            await step.event.wait()
        elif isinstance(step, Reset):
            wire.reset_connection()
            return False
        elif isinstance(step, ResetStream):
            wire.reset_stream(step.error_code)
            return False
        elif isinstance(step, Hang):
            while step.drip:
                await trio.sleep(step.every)
                await wire.send(step.drip, last=False)
            await trio.sleep_forever()
        elif isinstance(step, GoAway):
            wire.go_away(step)
        elif isinstance(step, UpdateSettings):
            wire.update_settings(step)
        # Stream: the responder has expanded it into the request's normal stream
    return True

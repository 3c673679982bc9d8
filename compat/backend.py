"""The backend that LiteLLM's proxy forwards to in `just compat`: our test upstream on loopback.

Writes its port to the file named on the command line, then serves until killed. LiteLLM is the
real third-party server under test here: what reaches the adapter is LiteLLM's own re-encoding of
the stream (its chunk shapes, usage placement, `[DONE]`), not this backend's bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from oai_adapter.testing import FakeUpstream


async def main(port_file: Path) -> None:
    upstream = FakeUpstream(model="compat-backend", pace=0.005, flavor="openai")
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        await trio.Path(port_file).write_text(str(upstream.port))


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))

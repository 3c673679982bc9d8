"""`logger.enable("oai_adapter")` works before or after `import oai_adapter` (issue 14).

docs/observability.md shows every snippet with `enable` first; the import used to call
`logger.disable("oai_adapter")` unconditionally and silence them. Each case runs in a fresh
interpreter, since the order of two process-wide calls is what is tested.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

_TASK = """
import trio
from oai_adapter import AdapterConfig, OpenAIAdapter, TaskRequest
from oai_adapter.testing import FakeUpstream

async def main() -> None:
    upstream = FakeUpstream()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            config = AdapterConfig(base_url=upstream.base_url, model=upstream.model)
            async with OpenAIAdapter(config) as adapter:
                async with adapter.submit(TaskRequest(task_id="t-1", prompt="hi")) as events:
                    async for _ in events:
                        pass
            nursery.cancel_scope.cancel()

trio.run(main)
"""

_SINK = """
import sys
from loguru import logger
logger.remove()
logger.add(sys.stdout, format="{name}|{extra[job_id]}|{message}", filter="oai_adapter")
"""


def _records(before_import: str) -> list[str]:
    """The oai_adapter records a fresh interpreter writes running one task."""
    script = _SINK + before_import + "\nimport oai_adapter\n" + _TASK
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("oai_adapter")]


# Enabling *after* the import is the in-process tests' way (tests/test_logging.py); each case
# here costs a fresh interpreter, so only the two orders those tests cannot show are run.


def test_enable_before_the_import_reaches_the_sink() -> None:
    records = _records('logger.enable("oai_adapter")')  # the order docs/observability.md shows
    assert any("|t-1|" in line for line in records), records


def test_without_enable_the_library_writes_nothing() -> None:
    assert _records("") == []

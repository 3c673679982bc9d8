"""The example orchestrator (`examples/orchestrator.py`, `just example`) runs to its end against
embedded servers: every job is accounted for, gpu-1 is restarted (rebound) mid-run, jobs past
their deadline are cancelled, and the shutdown cancels what is still running."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
from trio.testing import MockClock

from .conftest import IO_DEADLINE

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "orchestrator.py"

OUTCOMES = {"stop", "deadline", "shutdown", "not started"}


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_orchestrator", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


async def test_example_orchestrator_accounts_for_every_job(
    loopback_clock: MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example()
    with trio.fail_after(IO_DEADLINE):
        report = await example.orchestrate(jobs=24, workers=4, pace=0.01, stop_after=18)
    summary = report.summary()
    assert sum(summary.values()) == 24, summary
    assert set(summary) <= OUTCOMES, summary
    assert summary["stop"] >= 12, summary
    assert summary["deadline"] >= 1, summary  # every 8th job promises less than it takes
    assert summary["shutdown"] + summary["not started"] >= 1, summary  # stopped mid-run
    assert report.rebound_at_job is not None  # gpu-1 was restarted while jobs ran
    assert set(report.served_by) == {"gpu-0", "gpu-1", "gpu-2"}
    assert report.running == set()
    out = capsys.readouterr().out
    assert "gpu-1 restarted" in out
    assert "shutting down" in out

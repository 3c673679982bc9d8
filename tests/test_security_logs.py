"""The key is nowhere (OC-ADAPT-OAI-6020): the library's logger at TRACE, every record captured
serialised (message and extra), streams, retries, a 401 that echoes the key, an error body and
a mid-stream error event that echo it, probes — and neither key appears in a record, in
`repr(config)`, in exception text, in an `ErrorInfo`, in an encoded event or in a pickled
config. The stdlib loggers of the HTTP stack (httpx2, httpcore2, h11) are captured too."""

from __future__ import annotations

import ast
import json
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trio
from loguru import logger

import oai_adapter
from oai_adapter import End, ErrorKind, OpenAIAdapter, Secret, WorkerError
from oai_adapter.testing import FakeUpstream, Reply, Send, chat_chunk, sse

from .conftest import make_config
from .helpers import collect

#: The key the upstream accepts: OpenAI-shaped, so the patterns would catch it too.
GOOD_KEY = "sk-proj-T3stK3yAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
#: A wrong key of a self-hosted server: matches no pattern, found only as a live `Secret`.
WRONG_KEY = "local-7f3a9c1e5b2d8f4a6c0e9b1d3f5a7c9e"
KEYS = (GOOD_KEY, WRONG_KEY)


@pytest.fixture
def records() -> Iterator[list[str]]:
    """Every loguru record at TRACE and above, serialised (message, extra, exception)."""
    captured: list[str] = []
    logger.enable("oai_adapter")
    sink = logger.add(captured.append, level="TRACE", serialize=True, diagnose=True)
    try:
        yield captured
    finally:
        logger.remove(sink)
        logger.disable("oai_adapter")


def assert_no_key(*texts: str | bytes) -> None:
    for text in texts:
        raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for key in KEYS:
            assert key not in raw
            assert key[8:24] not in raw  # no recognisable piece either


@pytest.mark.req("OC-ADAPT-OAI-6020")
async def test_the_key_is_nowhere_in_logs_errors_events_or_pickles(
    records: list[str], caplog: pytest.LogCaptureFixture, nursery: trio.Nursery
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream = FakeUpstream(api_key=GOOD_KEY)
    await nursery.start(upstream.serve)
    echo = {"error": {"message": f"key {GOOD_KEY} is over quota", "type": "rate_limit_error"}}
    upstream.script(
        # task 1: a retried 429 whose body echoes the key, then a normal stream
        Reply.status_only(429, echo, retry_after="0"),
        Reply(),
        # task 2: a stream that fails mid-way with an error event that echoes the key
        Reply(
            steps=[
                Send(sse(chat_chunk("", role=True))),
                Send(sse(chat_chunk("Hello"))),
                Send(sse({"error": {"message": f"engine crashed serving {GOOD_KEY}"}})),
            ]
        ),
    )
    good = make_config(upstream, api_key=GOOD_KEY)
    wrong = make_config(upstream, api_key=WRONG_KEY)
    ends: list[End] = []
    async with OpenAIAdapter(good) as adapter:
        first = await collect(adapter, "t-retried")
        second = await collect(adapter, "t-mid-stream")
        await adapter.health()
        await adapter.props()
        await adapter.engine_version()
    async with OpenAIAdapter(wrong) as adapter:
        refused = await collect(adapter, "t-refused")
        health = await adapter.health()
        await adapter.props()

    for events in (first, second, refused):
        end = events[-1]
        assert isinstance(end, End)
        ends.append(end)
    assert ends[0].reason == "stop"
    assert ends[1].error is not None
    assert ends[1].error.kind is ErrorKind.UPSTREAM_ERROR
    assert ends[2].error is not None
    assert ends[2].error.kind is ErrorKind.UPSTREAM_AUTH
    assert "Incorrect API key provided: ****" in ends[2].error.message
    assert not health.ready

    # The scenario happened as intended: the upstream saw the keys, and echoed them.
    assert upstream.completion_requests()[0].headers["authorization"] == f"Bearer {GOOD_KEY}"
    assert upstream.completion_requests()[-1].headers["authorization"] == f"Bearer {WRONG_KEY}"

    # Logs: the retry (WARNING), the errors (ERROR), the ends (INFO), the sends (DEBUG).
    levels = {json.loads(r)["record"]["level"]["name"] for r in records}
    assert {"DEBUG", "INFO", "WARNING", "ERROR"} <= levels
    assert_no_key(*records)
    assert_no_key(*(r.getMessage() for r in caplog.records))

    # Everything we hand out.
    for end in ends:
        assert_no_key(repr(end), msgspec.json.encode(end), msgspec.msgpack.encode(end))
        if end.error is not None:
            assert_no_key(end.error.message, repr(end.error))
            with pytest.raises(WorkerError) as info:
                end.raise_for_error()
            assert_no_key(str(info.value), repr(info.value), repr(info.value.args))
    assert_no_key(repr(health), health.detail)
    for config in (good, wrong):
        assert_no_key(repr(config), str(config), pickle.dumps(config))
        assert_no_key(msgspec.json.encode(config, enc_hook=Secret.enc_hook))


# --- structure: the properties above cannot be bypassed by a new module -----------------------

PACKAGE = Path(oai_adapter.__file__).parent


def _calls(name: str) -> list[tuple[str, str]]:
    """(module, enclosing function) of every call of an attribute or function `name`."""
    found: list[tuple[str, str]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Call):
                    target = node.func
                    called = target.attr if isinstance(target, ast.Attribute) else None
                    if isinstance(target, ast.Name):
                        called = target.id
                    if called == name:
                        found.append((path.relative_to(PACKAGE).as_posix(), func.name))
    return found


@pytest.mark.req("OC-ADAPT-OAI-6020")
def test_the_key_is_revealed_in_one_place_where_the_authorization_header_is_built() -> None:
    assert _calls("reveal") == [("_http.py", "_auth_header")]


@pytest.mark.req("OC-ADAPT-OAI-6020")
def test_library_modules_log_only_through_the_patched_logger() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_log.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "loguru":
                assert [a.name for a in node.names] == ["Logger"] or node.level, path
            if isinstance(node, ast.Import):
                assert "loguru" not in [a.name for a in node.names], path
                assert "logging" not in [a.name for a in node.names], path

"""The `oai-adapter` command: demo, stream, check and bench against the test upstream.

The commands run in-process, in the same trio run as a `FakeUpstream` on 127.0.0.1 (fast);
one test runs the real program in a subprocess and interrupts it with SIGINT.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import trio
import trio.testing
from trio.testing import MockClock

import oai_adapter
from oai_adapter._cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, build_parser, main
from oai_adapter._cli._commands import (
    collect_checks,
    run_bench,
    run_check,
    run_demo,
    run_stream,
)
from oai_adapter._cli._term import Term
from oai_adapter.testing import DEFAULT_TEXT, FakeUpstream, Hang, Reply, Send, chat_chunk, sse

IO_DEADLINE = 20  # seconds, as in conftest.py

KEY = "sk-cli-test-4f1d2c3b5a69788796a5b4c3d2e1f0aa"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads OPENAI_BASE_URL / OPENAI_API_KEY; the tests set them when they mean to."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)


class _Out(io.StringIO):
    """A captured stream that sets `seen` once `marker` has been written."""

    def __init__(self, marker: str = "") -> None:
        super().__init__()
        self.marker = marker
        self.seen = trio.Event()

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.marker and self.marker in self.getvalue():
            self.seen.set()
        return n


def _term(marker: str = "") -> tuple[Term, _Out, _Out]:
    out, err = _Out(marker), _Out()
    return Term(out, err), out, err


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _endpoint(upstream: FakeUpstream) -> list[str]:
    return ["--base-url", upstream.base_url, "--model", upstream.model]


def _hanging_reply(*tokens: str) -> Reply:
    steps = [Send(sse(chat_chunk("", role=True)))]
    steps += [Send(sse(chat_chunk(t))) for t in tokens]
    return Reply(steps=[*steps, Hang()])


# --- help, usage errors, exit codes ----------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["demo"], ["serve"], ["stream"], ["check"], ["bench"]])
def test_help_on_each_command_exits_0_and_names_the_command(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: oai-adapter {' '.join(command)}".rstrip())
    assert "OPENAI_API_KEY" in out  # where the key comes from is on every page


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"oai-adapter {oai_adapter.__version__}\n"


def test_missing_required_option_is_a_usage_error_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["stream", "hello"])  # no --model
    assert exit_info.value.code == EXIT_USAGE
    assert "--model" in capsys.readouterr().err


def test_bad_configuration_exits_2_with_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "--base-url", "ftp://x", "--model", "m", "hi"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "oai-adapter: error: AdapterConfig.base_url: scheme must be http or https, got 'ftp'"
    ]


def test_base_url_is_required_when_openai_base_url_is_unset(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "--model", "m"]) == EXIT_USAGE
    assert "OPENAI_BASE_URL is not set" in capsys.readouterr().err


def test_non_positive_counts_are_rejected_by_the_parser() -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse("bench", "--model", "m", "--concurrency", "0")
    assert exit_info.value.code == EXIT_USAGE


# --- demo ------------------------------------------------------------------------------------


async def test_demo_streams_the_text_then_prints_the_metrics_table() -> None:
    term, out, _err = _term()
    with trio.fail_after(IO_DEADLINE):
        code = await run_demo(_parse("demo", "--pace", "0"), term, trio.Event())
    assert code == EXIT_OK
    text = out.getvalue()
    assert DEFAULT_TEXT in text
    assert text.index(DEFAULT_TEXT) < text.index("TTFT")
    for label in ("TTFT", "decode time", "tokens/s", "tokens in/out"):
        assert label in text
    assert "end: stop, 24 tokens" in text


# --- stream ----------------------------------------------------------------------------------


@pytest.mark.req("OC-ADAPT-OAI-6001")
async def test_stream_writes_tokens_to_stdout_and_the_end_to_stderr(
    upstream: FakeUpstream,
) -> None:
    term, out, err = _term()
    args = _parse("stream", *_endpoint(upstream), "--max-tokens", "3", "Hi")
    with trio.fail_after(IO_DEADLINE):
        code = await run_stream(args, term, trio.Event())
    assert code == EXIT_OK
    assert out.getvalue() == "Trio makes structured\n"
    assert "end: length, 3 tokens" in err.getvalue()
    assert "TTFT" in err.getvalue()
    assert upstream.completion_requests()[0].json["max_tokens"] == 3


@pytest.mark.req("OC-ADAPT-OAI-6000")
async def test_stream_interrupt_cancels_prints_what_was_received_and_exits_130(
    upstream: FakeUpstream,
) -> None:
    upstream.script(_hanging_reply("Hello", " there"))
    term, out, err = _term(marker="there")
    interrupted = trio.Event()
    codes: list[int] = []
    args = _parse("stream", *_endpoint(upstream), "Hi")
    with trio.fail_after(IO_DEADLINE):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                codes.append(await run_stream(args, term, interrupted))

            nursery.start_soon(run)
            await out.seen.wait()  # two tokens are on screen; the upstream now hangs
            interrupted.set()
        await upstream.disconnected.wait()  # the cancel closed the upstream response
    assert codes == [EXIT_INTERRUPTED]
    assert out.getvalue() == "Hello there\n"
    assert "interrupted: cancelled after 2 tokens; received:\nHello there\n" in err.getvalue()


@pytest.mark.req("OC-ADAPT-OAI-6020")
async def test_stream_upstream_error_exits_1_and_never_echoes_the_key(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    server = FakeUpstream(api_key="sk-the-right-one-0000000000000000")
    await nursery.start(server.serve)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # wrong key: the upstream echoes it back
    term, out, err = _term()
    with trio.fail_after(IO_DEADLINE):
        code = await run_stream(_parse("stream", *_endpoint(server), "Hi"), term, trio.Event())
    assert code == EXIT_FAILED
    assert err.getvalue().startswith("oai-adapter: error: UPSTREAM_AUTH (HTTP 401): ")
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in out.getvalue() + err.getvalue()
    assert KEY[3:15] not in out.getvalue() + err.getvalue()


async def test_stream_sends_the_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    server = FakeUpstream(api_key=KEY)
    await nursery.start(server.serve)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    term, out, err = _term()
    with trio.fail_after(IO_DEADLINE):
        code = await run_stream(_parse("stream", *_endpoint(server), "Hi"), term, trio.Event())
    assert code == EXIT_OK
    assert out.getvalue() == DEFAULT_TEXT + "\n"
    assert KEY not in err.getvalue()


async def open_cli(*args: str) -> trio.Process:
    """The real program in a subprocess (no OPENAI_* from the environment), pipes for stdout
    and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    code = "import sys; from oai_adapter._cli import main; sys.exit(main())"
    return await trio.lowlevel.open_process(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )


async def read_until(stream: trio.abc.ReceiveStream | None, marker: bytes) -> bytes:
    """What `stream` gave up to and including `marker`; fails if it ends first."""
    assert stream is not None
    seen = b""
    while marker not in seen:
        chunk = await stream.receive_some()
        assert chunk, f"the process ended early: {seen!r}"
        seen += chunk
    return seen


async def read_to_end(stream: trio.abc.ReceiveStream | None) -> bytes:
    assert stream is not None
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def test_ctrl_c_in_a_real_process_cancels_cleanly_and_exits_130(
    upstream: FakeUpstream,
) -> None:
    upstream.script(_hanging_reply("Hello", " there"))
    with trio.fail_after(IO_DEADLINE):
        proc = await open_cli("stream", *_endpoint(upstream), "Hi")
        await read_until(proc.stdout, b"there")
        proc.send_signal(signal.SIGINT)
        err = await read_to_end(proc.stderr)
        assert await proc.wait() == EXIT_INTERRUPTED
        await upstream.disconnected.wait()
    assert b"interrupted: cancelled after 2 tokens" in err
    assert b"Traceback" not in err


# --- check -----------------------------------------------------------------------------------


@pytest.mark.req("OC-ADAPT-OAI-6000", "OC-ADAPT-OAI-6010")
async def test_check_passes_probes_chat_completions_and_cancel(upstream: FakeUpstream) -> None:
    with trio.fail_after(IO_DEADLINE):
        rows = await collect_checks(_parse("check", *_endpoint(upstream)))
        await upstream.wait_quiet()  # the server has seen every close (sockets close at once)
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows] == [
        "health",
        "props",
        "engine version",
        "stream chat",
        "stream completions",
        "stream responses",
        "cancel (chat)",
    ]
    for name in ("health", "props", "engine version", "stream chat", "stream completions"):
        assert by_name[name].status == "pass", by_name[name]
    assert by_name["engine version"].detail.startswith("llama.cpp b1-0c1e570")
    assert by_name["props"].detail == "slots 4 (4 free), context 1024, model test-model"
    assert by_name["stream chat"].detail.startswith("16 tokens, finish length, usage 5/16")
    assert by_name["cancel (chat)"].status == "pass"
    assert upstream.disconnects >= 1  # the cancelled stream's response was closed


async def test_check_reports_an_api_answering_404_as_not_supported(
    upstream: FakeUpstream,
) -> None:
    not_found = {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}
    upstream.script(Reply.status_only(404, not_found))  # the chat stream's request
    with trio.fail_after(IO_DEADLINE):
        rows = await collect_checks(_parse("check", *_endpoint(upstream)))
    by_name = {r.name: r for r in rows}
    assert by_name["stream chat"].status == "skip"
    assert by_name["stream chat"].detail.startswith("not supported (UPSTREAM_NOT_FOUND (HTTP 404)")
    assert by_name["cancel (completions)"].status == "pass"  # cancel moves to a supported api


async def test_check_failure_prints_the_reason_and_exits_1(upstream: FakeUpstream) -> None:
    boom = {"error": {"message": "kaboom", "type": "server_error"}}
    upstream.script(Reply.status_only(500, boom))
    term, out, err = _term()
    with trio.fail_after(IO_DEADLINE):
        code = await run_check(_parse("check", *_endpoint(upstream)), term, trio.Event())
    assert code == EXIT_FAILED
    line = next(ln for ln in out.getvalue().splitlines() if ln.startswith("stream chat"))
    assert line.split()[2:] == ["FAIL", "UPSTREAM_ERROR", "(HTTP", "500):", "kaboom"]
    assert "failed" in err.getvalue()


async def test_check_json_is_one_document_with_a_row_per_check(upstream: FakeUpstream) -> None:
    upstream.script(Reply.status_only(500, {"error": {"message": "kaboom"}}))
    term, out, _err = _term()
    with trio.fail_after(IO_DEADLINE):
        code = await run_check(_parse("check", *_endpoint(upstream), "--json"), term, trio.Event())
    doc = json.loads(out.getvalue())
    assert code == EXIT_FAILED
    assert doc["ok"] is False
    chat = next(c for c in doc["checks"] if c["name"] == "stream chat")
    assert chat == {
        "name": "stream chat",
        "status": "fail",
        "detail": "UPSTREAM_ERROR (HTTP 500): kaboom",
    }


async def test_check_against_a_closed_port_fails_health_and_exits_1(
    loopback_clock: MockClock,
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    term, out, _err = _term()
    args = _parse("check", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m")
    with trio.fail_after(IO_DEADLINE):
        code = await run_check(args, term, trio.Event())
    assert code == EXIT_FAILED
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # header, rule, the health row: nothing else is tried
    assert lines[2].split()[:3] == ["health", "FAIL", "POOL_UNAVAILABLE:"]


# --- bench -----------------------------------------------------------------------------------


@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_bench_json_counts_every_request_token_and_gap(upstream: FakeUpstream) -> None:
    term, out, _err = _term()
    args = _parse("bench", *_endpoint(upstream), "--requests", "6", "--concurrency", "3", "--json")
    with trio.fail_after(IO_DEADLINE):
        code = await run_bench(args, term, trio.Event())
    assert code == EXIT_OK
    doc = json.loads(out.getvalue())
    n = len(upstream.tokens)
    assert (doc["requests"], doc["succeeded"], doc["failed"]) == (6, 6, 0)
    assert doc["tokens_out"] == 6 * n
    assert doc["ttft_ms"]["count"] == 6
    assert doc["itl_ms"]["count"] == 6 * (n - 1)
    assert doc["tpot_ms"]["count"] == 6
    assert doc["e2el_ms"]["count"] == 6
    for dist in ("ttft_ms", "itl_ms", "tpot_ms", "e2el_ms"):
        assert set(doc[dist]) == {"count", "mean", "p50", "p90", "p99"}
        assert doc[dist]["p50"] <= doc[dist]["p90"] <= doc[dist]["p99"]
    assert doc["concurrency"] == 3
    assert len(upstream.completion_requests()) == 6


async def test_bench_counts_failed_requests_by_kind_and_exits_1(upstream: FakeUpstream) -> None:
    bad = {"error": {"message": "bad request", "type": "invalid_request_error"}}
    upstream.script(Reply.status_only(400, bad), Reply.status_only(400, bad))
    term, out, err = _term()
    args = _parse("bench", *_endpoint(upstream), "--requests", "5", "--concurrency", "1")
    with trio.fail_after(IO_DEADLINE):
        code = await run_bench(args, term, trio.Event())
    assert code == EXIT_FAILED
    assert "requests 3 ok / 2 failed" in out.getvalue()
    assert (
        "oai-adapter: error: 2 requests failed with INVALID_PARAMS: bad request" in err.getvalue()
    )
    header = out.getvalue().splitlines()[0].split()
    assert header == ["ms", "mean", "p50", "p90", "p99", "n"]


async def test_bench_interrupt_cancels_running_requests_and_exits_130(
    upstream: FakeUpstream,
) -> None:
    upstream.script(*(_hanging_reply() for _ in range(4)))
    term, out, _err = _term()
    interrupted = trio.Event()
    codes: list[int] = []
    args = _parse("bench", *_endpoint(upstream), "--requests", "4", "--concurrency", "2", "--json")
    with trio.fail_after(IO_DEADLINE):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                codes.append(await run_bench(args, term, interrupted))

            nursery.start_soon(run)
            while upstream.streams_open < 2:
                await trio.testing.wait_all_tasks_blocked()
            interrupted.set()
    assert codes == [EXIT_INTERRUPTED]
    doc = json.loads(out.getvalue())
    assert doc["interrupted"] is True
    assert doc["requests"] == 0  # cancelled requests are not samples
    assert len(upstream.completion_requests()) == 2  # no new request after the interrupt

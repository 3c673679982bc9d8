"""The `oai-adapter` command, issue 14: errors that say why, bad numbers as usage errors,
`serve`, `--ca-bundle`, the demo on every api, plurals.

In-process against a `FakeUpstream` on 127.0.0.1 (port 0), except `serve`, which runs as the
real program in a subprocess and is stopped with SIGINT.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import trio

from oai_adapter._cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from oai_adapter._cli._commands import collect_checks, run_bench, run_demo, run_stream
from oai_adapter.testing import FakeUpstream, Reply, Send, chat_chunk, sse

from .conftest import IO_DEADLINE
from .test_cli import (
    KEY,
    _clean_env,  # noqa: F401  (autouse: no OPENAI_* from the environment)
    _endpoint,
    _parse,
    _term,
    open_cli,
    read_to_end,
    read_until,
)

# --- a refused TLS connection says why ----------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_a_refused_tls_connection_from_the_cli_says_why(
    tls_upstream: FakeUpstream, http2: bool
) -> None:
    term, out, err = _term()
    argv = ["stream", *_endpoint(tls_upstream), *(["--http2"] if http2 else []), "Hi"]
    with trio.fail_after(IO_DEADLINE):
        code = await run_stream(_parse(*argv), term, trio.Event())
    assert code == EXIT_FAILED
    assert out.getvalue() == ""
    line = err.getvalue().strip()
    assert line.startswith("oai-adapter: error: POLICY: TLS verification failed for localhost:")
    assert line.endswith(
        "it was issued by an unknown CA (not in the system store or ca_bundle) "
        "(OpenSSL: unable to get local issuer certificate)"
    ), line


# --- --ca-bundle ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["stream", "check", "bench"])
def test_every_command_that_talks_to_an_endpoint_takes_ca_bundle(command: str) -> None:
    args = _parse(
        command, "--model", "m", "--ca-bundle", "/x/ca.pem", *(["Hi"] * (command == "stream"))
    )
    assert args.ca_bundle == "/x/ca.pem"


@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_stream_with_ca_bundle_trusts_a_private_ca(
    tls_upstream: FakeUpstream, ca_file: str
) -> None:
    term, out, _err = _term()
    args = _parse("stream", *_endpoint(tls_upstream), "--ca-bundle", ca_file, "Hi")
    with trio.fail_after(IO_DEADLINE):
        code = await run_stream(args, term, trio.Event())
    assert code == EXIT_OK
    assert out.getvalue() == "".join(tls_upstream.tokens) + "\n"


async def test_check_with_ca_bundle_passes_against_a_private_ca(
    tls_upstream: FakeUpstream, ca_file: str
) -> None:
    with trio.fail_after(IO_DEADLINE):
        rows = await collect_checks(
            _parse("check", *_endpoint(tls_upstream), "--ca-bundle", ca_file)
        )
    assert {r.name: r.status for r in rows} == {
        "health": "pass",
        "props": "pass",
        "engine version": "pass",
        "stream chat": "pass",
        "stream completions": "pass",
        "stream responses": "pass",
        "cancel (chat)": "pass",
    }


def test_a_ca_bundle_that_is_not_a_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.pem")
    argv = ["check", "--base-url", "https://localhost:1/v1", "--model", "m", "--ca-bundle", missing]
    assert main(argv) == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"oai-adapter: error: AdapterConfig.ca_bundle: no such file {missing!r}\n"
    )


# --- check with a refused key -------------------------------------------------------------------


async def test_check_with_a_refused_key_fails_props_and_version_saying_so(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    server = FakeUpstream(api_key="sk-the-right-one-0000000000000000")
    await nursery.start(server.serve)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with trio.fail_after(IO_DEADLINE):
        rows = await collect_checks(_parse("check", *_endpoint(server)))
    by_name = {r.name: r for r in rows}
    refused = (
        "not read: the upstream refused the API key (HTTP 401); "
        "set OPENAI_API_KEY to a key it accepts"
    )
    assert (by_name["props"].status, by_name["props"].detail) == ("fail", refused)
    assert (by_name["engine version"].status, by_name["engine version"].detail) == (
        "fail",
        refused,
    )
    assert by_name["health"].status == "fail"
    assert all(KEY not in r.detail for r in rows)


# --- bench against a server that cuts streams short ----------------------------------------------


def _cut_short() -> Reply:
    """What llama-cpp-python sends the running request when the next one arrives: the
    role-only delta, then `[DONE]` without a finish reason (FACTS.md)."""
    return Reply(steps=[Send(sse(chat_chunk("", role=True))), Send(b"data: [DONE]\n\n")])


async def test_bench_says_what_the_upstream_did_and_to_run_with_concurrency_1(
    upstream: FakeUpstream,
) -> None:
    upstream.script(_cut_short(), _cut_short(), _cut_short())
    term, out, err = _term()
    args = _parse("bench", *_endpoint(upstream), "--requests", "4", "--concurrency", "4")
    with trio.fail_after(IO_DEADLINE):
        code = await run_bench(args, term, trio.Event())
    assert code == EXIT_FAILED
    assert "requests 1 ok / 3 failed" in out.getvalue()
    lines = err.getvalue().splitlines()
    assert (
        "oai-adapter: error: 3 requests failed with WORKER_RESET: the upstream sent [DONE] "
        "before a finish reason (generation cut short)"
    ) in lines
    hint = next(line for line in lines if line.startswith("hint: "))
    assert "[DONE] and no finish reason" in hint
    assert hint.endswith("needs --concurrency 1")


async def test_bench_json_carries_the_first_message_of_each_error_kind_and_the_hints(
    upstream: FakeUpstream,
) -> None:
    upstream.script(_cut_short())
    term, out, _err = _term()
    args = _parse("bench", *_endpoint(upstream), "--requests", "2", "--concurrency", "2", "--json")
    with trio.fail_after(IO_DEADLINE):
        code = await run_bench(args, term, trio.Event())
    assert code == EXIT_FAILED
    doc = json.loads(out.getvalue())
    assert doc["errors"] == {"WORKER_RESET": 1}
    assert doc["error_messages"] == {
        "WORKER_RESET": "the upstream sent [DONE] before a finish reason (generation cut short)"
    }
    assert len(doc["hints"]) == 1
    assert "--concurrency 1" in doc["hints"][0]


# --- numbers: a usage line and exit 2, never a traceback -----------------------------------------

_BAD_NUMBERS = [
    ("stream", "--temperature", "nan"),
    ("stream", "--temperature", "-1"),
    ("stream", "--temperature", "inf"),
    ("stream", "--max-tokens", "0"),
    ("stream", "--max-tokens", "nan"),
    ("stream", "--timeout", "nan"),
    ("stream", "--timeout", "-1"),
    ("stream", "--timeout", "inf"),
    ("demo", "--pace", "nan"),
    ("demo", "--pace", "-1"),
    ("check", "--max-tokens", "-1"),
    ("check", "--cancel-tokens", "0"),
    ("bench", "--concurrency", "nan"),
    ("bench", "--requests", "-1"),
    ("bench", "--max-tokens", "1.5"),
    ("serve", "--port", "-1"),
    ("serve", "--port", "70000"),
    ("serve", "--pace", "nan"),
]


@pytest.mark.parametrize(("command", "flag", "value"), _BAD_NUMBERS)
def test_a_bad_number_is_one_usage_line_and_exit_2(
    command: str, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, f"{flag}={value}"]
    if command in ("stream", "check", "bench"):
        argv += ["--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    if command == "stream":
        argv.append("Hi")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "ExceptionGroup" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [
        f"oai-adapter {command}: error: argument {flag}: {errors[0].split(': ', 3)[-1]}"
    ]
    assert value in errors[0] or "not " in errors[0]


# --- serve ------------------------------------------------------------------------------------------


async def test_serve_prints_its_url_check_passes_against_it_and_ctrl_c_exits_0() -> None:
    with trio.fail_after(IO_DEADLINE):
        proc = await open_cli("serve", "--port", "0", "--pace", "0")
        try:
            base_url = (await read_until(proc.stdout, b"\n")).decode().splitlines()[0]
            assert base_url.startswith("http://127.0.0.1:")
            assert base_url.endswith("/v1")
            rows = await collect_checks(
                _parse("check", "--base-url", base_url, "--model", "test-model")
            )
            assert [(r.name, r.status) for r in rows if r.status != "pass"] == []
            proc.send_signal(signal.SIGINT)
            err = await read_to_end(proc.stderr)
            assert await proc.wait() == EXIT_OK
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert b"Ctrl-C stops" in err
    assert err.rstrip().endswith(b"stopped")
    assert b"Traceback" not in err


def test_serve_refuses_a_non_loopback_host_unless_allowed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "oai-adapter: error: --host 0.0.0.0 is not a loopback address and the embedded "
        "upstream has no authentication: add --allow-remote to serve it there\n"
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.10", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    from oai_adapter._cli._commands import is_loopback

    assert is_loopback(host) is loopback


async def test_serve_on_a_port_in_use_is_one_error_line_and_exit_2(upstream: FakeUpstream) -> None:
    from oai_adapter._cli._commands import run_serve

    term, _out, err = _term()
    args = _parse("serve", "--port", str(upstream.port))
    with trio.fail_after(IO_DEADLINE):
        code = await run_serve(args, term, trio.Event())
    assert code == EXIT_USAGE
    assert err.getvalue().startswith(
        f"oai-adapter: error: cannot listen on 127.0.0.1:{upstream.port}: "
    )


# --- demo on every api, plurals ----------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "completions", "responses"])
async def test_demo_streams_on_every_api(api: str) -> None:
    term, out, _err = _term()
    with trio.fail_after(IO_DEADLINE):
        code = await run_demo(_parse("demo", "--api", api, "--pace", "0"), term, trio.Event())
    assert code == EXIT_OK
    assert "end: stop, 24 tokens" in out.getvalue()


async def test_one_token_is_not_1_tokens(upstream: FakeUpstream) -> None:
    term, out, err = _term()
    args = _parse("stream", *_endpoint(upstream), "--max-tokens", "1", "Hi")
    with trio.fail_after(IO_DEADLINE):
        code = await run_stream(args, term, trio.Event())
    assert code == EXIT_OK
    assert out.getvalue() == "Trio\n"
    assert "end: length, 1 token\n" in err.getvalue()
    assert "1 tokens" not in err.getvalue()


def test_plural() -> None:
    from oai_adapter._cli._term import plural

    assert [plural(n, "token") for n in (0, 1, 2)] == ["0 tokens", "1 token", "2 tokens"]

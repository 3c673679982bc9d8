"""One event grammar, one checker (`stream_problem`): it accepts every stream DESIGN allows —
reasoning and tool-call deltas among the Tokens included — and names what is wrong with every
stream it forbids (a checker that accepts anything would make the chaos and fuzz tests prove
nothing). `check_stream`, the tests and `oai-adapter check` all use it."""

from __future__ import annotations

import argparse
import io

import msgspec
import pytest
import trio

from oai_adapter import (
    End,
    ErrorInfo,
    ErrorKind,
    Metrics,
    ReasoningDelta,
    Started,
    Token,
    ToolCallDelta,
)
from oai_adapter._cli import EXIT_OK, build_parser
from oai_adapter._cli._commands import run_check
from oai_adapter._cli._term import Term
from oai_adapter._events import Event
from oai_adapter.testing import (
    FakeUpstream,
    Reply,
    ScriptedToolCall,
    check_stream,
    render_chat_deltas,
    render_responses_stream,
    stream_problem,
)

from .conftest import IO_DEADLINE

S = Started(task_id="t", model="m", attempt=1, http_version="HTTP/1.1")
S2 = Started(task_id="t", model="m", attempt=2, http_version="HTTP/1.1")
THINK = ReasoningDelta(task_id="t", text="hmm")
CALL = ToolCallDelta(task_id="t", index=0, call_id="c", name="f", arguments='{"a"')


def tok(i: int, text: str = "x", task_id: str = "t") -> Token:
    return Token(task_id=task_id, index=i, text=text)


def metrics(n: int, retries: int = 0) -> Metrics:
    return Metrics(
        task_id="t",
        ttft_ms=1.0,
        decode_time_ms=1.0,
        duration_ms=2.0,
        tokens_out=n,
        prompt_tokens=None,
        completion_tokens=None,
        retries=retries,
    )


def end(n: int, reason: str = "stop") -> End:
    error = ErrorInfo(kind=ErrorKind.UPSTREAM_ERROR, message="m") if reason == "error" else None
    return End(task_id="t", reason=reason, tokens_out=n, error=error)  # type: ignore[arg-type]


GOOD: list[list[Event]] = [
    [end(0, "error")],
    [end(0, "cancelled")],
    [S, metrics(0), end(0)],
    [S, tok(0), tok(1), metrics(2), end(2)],
    [S, tok(0), end(1, "cancelled")],
    [S, tok(0), metrics(1), end(1, "cancelled")],  # cancelled after the consumer read Metrics
    [S2, tok(0), metrics(1, retries=1), end(1, "error")],
    [S, THINK, THINK, tok(0), CALL, CALL, metrics(1), end(1, "tool_calls")],
    [S, CALL, metrics(0), end(0, "tool_calls")],  # a tool-call-only answer
    [S, THINK, tok(0), THINK, tok(1), end(2, "cancelled")],
]

BAD: list[tuple[list[Event], str]] = [
    ([], "no event at all"),
    ([S, tok(0), metrics(1)], "the stream did not end with End"),
    ([S, tok(0), metrics(1), end(1), end(1)], "more than one End"),
    ([S, tok(0), end(1)], "no Metrics before End"),
    ([S, THINK, end(0)], "no Metrics before End"),
    ([tok(0), metrics(1), end(1)], "the first event is Token, not Started"),
    ([THINK, metrics(0), end(0)], "the first event is ReasoningDelta, not Started"),
    ([S, tok(1), metrics(1), end(1)], "Token index 1 where 0 was due"),
    ([S, tok(0), THINK, tok(0), metrics(2), end(2)], "Token index 0 where 1 was due"),
    ([S, tok(0), metrics(1), end(2)], "End.tokens_out is 2, 1 Tokens were delivered"),
    ([S, tok(0), metrics(2), end(1)], "Metrics.tokens_out is 2, 1 Tokens were delivered"),
    ([S2, tok(0), metrics(1, retries=0), end(1)], "Metrics.retries is 0 on attempt 2"),
    ([S, metrics(0), tok(0), end(1)], "a Metrics among the deltas"),
    ([S, S, metrics(0), end(0)], "a Started among the deltas"),
    ([S, tok(0, task_id="u"), metrics(1), end(1)], "events of several tasks: ['t', 'u']"),
    ([End(task_id="t", reason="error", tokens_out=0)], "End.error is set iff the reason is error"),
    ([S, tok(0, ""), metrics(1), end(1)], "an empty Token at index 0"),
    ([msgspec.structs.replace(S, attempt=0), metrics(0), end(0)], "Started.attempt is 0"),
]


@pytest.mark.parametrize("events", GOOD)
def test_the_grammar_accepts_every_stream_design_allows(events: list[Event]) -> None:
    assert stream_problem(events) is None
    check_stream(events)


@pytest.mark.parametrize(("events", "problem"), BAD)
def test_the_grammar_names_what_is_wrong_with_a_broken_stream(
    events: list[Event], problem: str
) -> None:
    found = stream_problem(events)
    assert found is not None
    assert found.startswith(problem)
    with pytest.raises(AssertionError, match="^" + problem[:20]):
        check_stream(events)


def test_check_stream_rejects_tokens_that_are_not_the_upstream_prefix() -> None:
    events: list[Event] = [S, tok(0, "a"), tok(1, "c"), metrics(2), end(2)]
    check_stream(events, tokens=["a", "c", "d"])
    with pytest.raises(AssertionError):
        check_stream(events, tokens=["a", "b", "c"])
    with pytest.raises(AssertionError):
        check_stream(events, tokens=["a"])  # more Tokens than sent


async def test_cli_check_passes_a_model_that_streams_reasoning_and_tool_calls(
    upstream: FakeUpstream,
) -> None:
    """Regression: the CLI had its own grammar, which called a ReasoningDelta or ToolCallDelta
    among the Tokens broken, so `oai-adapter check` failed every reasoning or tool-calling model."""
    think = ["Counting", " is", " easy."]
    text = ["One,", " two,", " three."]
    call = ScriptedToolCall(name="count", arguments=['{"to":', " 3}"])
    upstream.script(
        Reply(steps=render_chat_deltas(text, reasoning=think, tool_calls=[call])),  # chat
        Reply(),  # completions: text only, as the legacy API is
        Reply(steps=render_responses_stream(text, reasoning=think, tool_calls=[call])),
    )
    out, err = io.StringIO(), io.StringIO()
    args: argparse.Namespace = build_parser().parse_args(
        ["check", "--base-url", upstream.base_url, "--model", upstream.model]
    )
    with trio.fail_after(IO_DEADLINE):
        code = await run_check(args, Term(out, err), trio.Event())
    rows = {
        line.split()[0] + " " + line.split()[1]: line for line in out.getvalue().splitlines()[2:]
    }
    assert "PASS" in rows["stream chat"].split(), rows["stream chat"]
    assert "PASS" in rows["stream responses"].split(), rows["stream responses"]
    assert code == EXIT_OK, out.getvalue()


async def test_cli_check_passes_a_model_that_answers_with_a_tool_call_only(
    upstream: FakeUpstream,
) -> None:
    """A tool-call-only answer (no text at all) is a healthy model: `check` used to say
    "no Token" and FAIL it."""
    call = ScriptedToolCall(name="count", arguments=['{"to":', " 3}"])
    upstream.script(Reply(steps=render_chat_deltas([], tool_calls=[call])))
    out, err = io.StringIO(), io.StringIO()
    args: argparse.Namespace = build_parser().parse_args(
        ["check", "--base-url", upstream.base_url, "--model", upstream.model]
    )
    with trio.fail_after(IO_DEADLINE):
        await run_check(args, Term(out, err), trio.Event())
    row = next(line for line in out.getvalue().splitlines() if line.startswith("stream chat"))
    assert "PASS" in row.split(), row
    assert "0 tokens, 3 tool-call deltas" in row, row  # the name, then two argument pieces

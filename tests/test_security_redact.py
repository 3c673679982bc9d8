"""Redaction (OC-ADAPT-OAI-6020, `shared/spec/log-fields.md`): `redact` removes credentials and
keeps every other character; the log patcher cleans message, `extra` and exceptions of every
record, and no record at ERROR or above carries headers."""

from __future__ import annotations

import json
import re
import string
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx2
import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from loguru import logger

from oai_adapter import ErrorInfo, ErrorKind, Secret, WorkerError
from oai_adapter._errors import MAX_MESSAGE_CHARS, error_from_event, error_from_status
from oai_adapter._log import HEADERS_DROPPED, TaskLog, log
from oai_adapter._redact import fingerprint, redact, redact_value

KEY = "zQ9-private_key.value~abcdefghijklmnop"  # matches no pattern: found as a live Secret

#: Redaction knows the keys of the `Secret`s alive now (a config holds its own); keep this one.
LIVE = Secret(KEY)

#: What real keys are made of, plus the punctuation some self-hosted servers accept.
KEY_CHARS = string.ascii_letters + string.digits + "-_.~+/=!#$%&*?@^|:;\"'\\(){}[]<>,"

keys = st.text(alphabet=KEY_CHARS, min_size=8, max_size=80).filter(lambda k: not k.startswith("*"))
surroundings = st.text(max_size=200)


@given(key=keys, prefix=surroundings, suffix=surroundings)
def test_redaction_removes_a_live_key_and_keeps_the_rest_intact(
    key: str, prefix: str, suffix: str
) -> None:
    secret = Secret(key)
    text = f"{prefix} {key} {suffix}"
    assume(text.count(key) == 1)
    assume(redact(prefix) == prefix and redact(suffix) == suffix)
    out = redact(text)
    assert key not in out
    assert out == f"{prefix} {secret.fingerprint} {suffix}"


@given(key=keys, prefix=surroundings, suffix=surroundings)
def test_redaction_removes_a_live_key_glued_to_any_text(key: str, prefix: str, suffix: str) -> None:
    secret = Secret(key)
    assert key not in redact(prefix + key + suffix)
    assert secret.fingerprint in redact(prefix + key + suffix)


@given(key=keys, prefix=surroundings, suffix=surroundings)
def test_redaction_removes_a_live_key_json_repr_or_url_escaped(
    key: str, prefix: str, suffix: str
) -> None:
    secret = Secret(key)  # alive for the whole example, as a config's key is
    forms = (key, json.dumps(key)[1:-1], repr(key)[1:-1], urllib.parse.quote(key, safe=""))
    for text in (
        json.dumps({"message": f"{prefix}{key}{suffix}"}),
        repr({"message": f"{prefix}{key}{suffix}"}),
        "https://h/?k=" + urllib.parse.quote(key, safe=""),
    ):
        out = redact(text)
        assert secret.fingerprint in out
        for form in forms:
            assert form not in out


@given(
    body=st.text(alphabet=string.ascii_letters + string.digits, min_size=20, max_size=60),
    kind=st.sampled_from(["sk-", "sk-proj-", "sk-ant-", "sk-svcacct-"]),
    prefix=surroundings,
    suffix=surroundings,
)
def test_unknown_openai_style_keys_are_removed_and_the_rest_kept(
    body: str, kind: str, prefix: str, suffix: str
) -> None:
    key = kind + body
    assume(body not in prefix + suffix)
    assume(redact(prefix) == prefix and redact(suffix) == suffix)
    out = redact(f"{prefix} {key} {suffix}")
    assert body not in out
    assert out == f"{prefix} {fingerprint(key)} {suffix}"


def test_equal_secrets_are_each_redacted_while_alive() -> None:
    # Regression: a WeakSet kept only the first of two equal Secrets, so when that one died
    # (an old config dropped) the key of the live one was no longer redacted.
    key = "another-private-key-0123456789"
    first = Secret(key)
    second = Secret(key)
    assert first == second
    del first
    assert key not in redact(f"echo {key}")
    assert second.fingerprint in redact(f"echo {key}")


#: Words that sit near credentials, mixed with ordinary ones: where over-redaction would hide.
_VOCABULARY = st.sampled_from(
    [
        "Bearer",
        "bearer",
        "Basic",
        "basic",
        "Authorization",
        "api_key",
        "api-key",
        "x-api-key",
        "password",
        "token",
        "tokens_out",
        "sk-",
        "sk-proj-",
        "http://",
        "https://",
        "user",
        "@",
        ":",
        "=",
        "'",
        '"',
        "{",
        "}",
        ",",
        "the",
        "usage",
        "of",
        "model",
        "gpt-4o-mini",
        "attempt",
        "1",
        "429",
        "abcdefgh12345678",
        "task-1234",
        "None",
    ]
)
_SEPARATORS = st.sampled_from(["", " ", ": ", "=", "\n", ", "])


@given(st.lists(st.tuples(_VOCABULARY | st.text(max_size=6), _SEPARATORS), max_size=30))
def test_redaction_only_replaces_whitespace_free_spans_with_fingerprints(
    parts: list[tuple[str, str]],
) -> None:
    # Whatever redaction decides is a credential, everything else is kept, in order: the
    # output is the input with some whitespace-free spans replaced by `****<fp6>`.
    text = "".join(word + sep for word, sep in parts)
    out = redact(text)
    pieces = re.split(r"\*\*\*\*[0-9a-f]{6}", out)
    assert re.fullmatch(r"\S+?".join(re.escape(p) for p in pieces), text, re.DOTALL)


@given(text=st.text(max_size=300))
def test_redaction_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@pytest.mark.parametrize(
    "text",
    [
        "request sent (api chat, model gpt-4o-mini, attempt 1)",
        "stream accepted (status 200, HTTP/1.1, upstream request id req-12345678)",
        "attempt 1 failed (POOL_UNAVAILABLE, status 503: Loading model), retrying in 12 ms",
        "ended (reason stop, tokens_out 23, ttft_ms 12.5, decode_time_ms 80.1)",
        "The basic usage of the bearer instruments is explained in task-12345678.",
        "first_token timeout: no token within 30 s of the request; tokens_out 0",
        "disk-usage-1234567890 and risk-assessment-2024 are not keys",
        "http://127.0.0.1:8080/v1/chat/completions?stream=true#frag",
        "https://host:8443/path@version is a path, not credentials",
        "{'api_key': None, 'proxy': None, 'password': null}",
        'SSE data: {"choices":[{"delta":{"content":"Hello"}}]}',
        "Ünïcödé text — with dashes, emoji 🚀 and numbers 3.14159",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Incorrect API key provided: sk-proj-ABCdef1234567890xyz.", "ABCdef1234567890xyz"),
        ("Authorization: Bearer abcdefgh12345", "abcdefgh12345"),
        ("authorization: bearer abcdefgh12345", "abcdefgh12345"),
        ("{'authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "dXNlcjpwYXNzd29yZA=="),
        ('{"x-api-key": "k-123456"}', "k-123456"),
        ("api-key=abc123&x=1", "abc123"),
        ("OPENAI_API_KEY=hunter2", "hunter2"),
        ("Proxy-Authorization: Basic cHJveHk6c2VjcmV0", "cHJveHk6c2VjcmV0"),
        ("proxy http://user:Pr0xyPa55@10.0.0.1:3128 failed", "Pr0xyPa55"),
        ("cloning https://ghp_abcdef123456@github.com/x", "ghp_abcdef123456"),
        ("password: correct-horse-battery", "correct-horse-battery"),
        ("client_secret=s3cr3t-value", "s3cr3t-value"),
    ],
)
def test_credentials_that_look_like_credentials_are_removed(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "****" in out


# --- errors ----------------------------------------------------------------------------------


def test_upstream_401_that_echoes_the_key_gives_an_error_without_it() -> None:
    secret = LIVE
    body = {"error": {"message": f"Incorrect API key provided: {KEY}.", "code": "invalid_api_key"}}
    err = error_from_status(401, msgspec.json.encode(body))
    assert err.kind is ErrorKind.UPSTREAM_AUTH
    for text in (err.message, str(err), repr(err), str(err.info()), repr(err.args)):
        assert KEY not in text
    assert secret.fingerprint in err.message


@pytest.mark.req("OC-ADAPT-OAI-6020")
def test_a_key_cut_by_the_message_limit_is_redacted_before_the_cut() -> None:
    # Regression: clipping first left the key's first ~20 characters, which redaction of the
    # whole key could no longer find.
    message = "x" * (MAX_MESSAGE_CHARS - 20) + " " + KEY + " tail"
    err = error_from_status(401, msgspec.json.encode({"error": {"message": message}}))
    assert len(err.message) <= MAX_MESSAGE_CHARS
    assert KEY[:10] not in err.message


def test_error_event_echoing_the_key_is_redacted() -> None:
    err = error_from_event(None, first=False, fallback_message=f"upstream said {KEY}")
    assert KEY not in err.message


def test_error_info_built_or_decoded_by_a_caller_is_redacted() -> None:
    built = ErrorInfo(kind=ErrorKind.UPSTREAM_AUTH, message=f"bad key {KEY}")
    assert KEY not in built.message
    raw = msgspec.json.encode({"kind": "UPSTREAM_AUTH", "message": f"bad key {KEY}"})
    decoded = msgspec.json.decode(raw, type=ErrorInfo)
    assert KEY not in decoded.message
    assert KEY not in str(WorkerError(ErrorKind.POLICY, f"x {KEY}"))


# --- the log patcher -------------------------------------------------------------------------


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Every record at TRACE and above, serialised by loguru (message, extra, exception)."""
    captured: list[str] = []
    logger.enable("oai_adapter")
    sink = logger.add(captured.append, level="TRACE", serialize=True, diagnose=True)
    parsed: list[dict[str, Any]] = []
    try:
        yield parsed
    finally:
        logger.remove(sink)
        logger.disable("oai_adapter")
    parsed.extend(json.loads(line) for line in captured)


def _dump(records: list[str]) -> str:
    return "\n".join(records)


def test_patcher_redacts_message_and_extra_of_every_level() -> None:
    secret = LIVE
    captured: list[str] = []
    sink = logger.add(captured.append, level="TRACE", serialize=True, diagnose=True)
    try:
        for level in ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            log.bind(
                plain=f"key {KEY} here",
                nested={"deep": [f"Bearer {KEY}", {"x": KEY}]},
                secret_obj=secret,
                api_key="short",
                obj=_Holder(KEY),
                raw=KEY.encode(),
            ).log(level, f"message with {KEY} and Authorization: Bearer {KEY}")
    finally:
        logger.remove(sink)
    assert len(captured) == 6
    text = _dump(captured)
    assert KEY not in text
    assert "short" not in text  # a value under a credential name, whatever it looks like
    for line in captured:
        extra = json.loads(line)["record"]["extra"]
        assert extra["secret_obj"] == secret.fingerprint
        assert extra["api_key"] == fingerprint("short")


class _Holder:
    """An object whose `str` holds the key: the patcher reduces it to its redacted text."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __str__(self) -> str:
        return f"Holder({self.value})"

    __repr__ = __str__


def test_key_split_between_message_and_extra_is_redacted_in_both() -> None:
    secret = LIVE
    captured: list[str] = []
    sink = logger.add(
        captured.append, level="TRACE", format="{message}|{extra[detail]}", colorize=False
    )
    try:
        log.bind(detail={"echo": KEY}).warning(f"upstream echoed {KEY}")
    finally:
        logger.remove(sink)
    assert KEY not in captured[0]
    assert captured[0].count(secret.fingerprint) == 2


def test_exception_text_is_redacted_and_its_traceback_dropped() -> None:
    captured: list[str] = []
    sink = logger.add(captured.append, level="TRACE", backtrace=True, diagnose=True)
    try:
        try:
            headers = {"authorization": f"Bearer {KEY}"}  # a local that diagnose would print
            raise RuntimeError(f"failed with {headers}")
        except RuntimeError:
            log.exception("call failed")
    finally:
        logger.remove(sink)
    assert KEY not in _dump(captured)
    assert "RuntimeError" in captured[0]


@pytest.mark.parametrize("level", ["ERROR", "CRITICAL"])
def test_headers_never_reach_a_record_at_error_or_above(level: str) -> None:
    captured: list[str] = []
    sink = logger.add(captured.append, level="TRACE", serialize=True)
    request = httpx2.Request("POST", "http://h/v1", headers={"x-correlation-id": "c-1"})
    try:
        log.bind(
            headers={"x-correlation-id": "c-1"},
            response_headers=httpx2.Headers({"x-request-id": "r-1"}),
            req=request,
            status=500,
        ).log(level, "upstream failed")
    finally:
        logger.remove(sink)
    extra = json.loads(captured[0])["record"]["extra"]
    assert extra["headers"] == HEADERS_DROPPED
    assert extra["response_headers"] == HEADERS_DROPPED
    assert extra["req"] == HEADERS_DROPPED
    assert extra["status"] == 500
    assert "c-1" not in captured[0]
    assert "r-1" not in captured[0]


def test_headers_below_error_are_kept_but_redacted() -> None:
    captured: list[str] = []
    sink = logger.add(captured.append, level="TRACE", serialize=True)
    try:
        log.bind(headers={"authorization": f"Bearer {KEY}", "x-request-id": "r-1"}).debug("sent")
    finally:
        logger.remove(sink)
    extra = json.loads(captured[0])["record"]["extra"]
    assert extra["headers"]["x-request-id"] == "r-1"
    assert KEY not in captured[0]


def test_task_log_error_records_carry_the_error_fields_and_no_headers() -> None:
    captured: list[str] = []
    sink = logger.add(captured.append, level="TRACE", serialize=True)
    try:
        tlog = TaskLog(job_id="t-1", endpoint_fields={"model": "m"})
        tlog.error("error UPSTREAM_AUTH", error_kind="UPSTREAM_AUTH", status=401, headers={"a": 1})
    finally:
        logger.remove(sink)
    extra = json.loads(captured[0])["record"]["extra"]
    assert extra["error_kind"] == "UPSTREAM_AUTH"
    assert extra["status"] == 401
    assert extra["headers"] == HEADERS_DROPPED


def test_redact_value_keeps_numbers_and_none_and_walks_containers() -> None:
    value = {"n": 1, "f": 1.5, "b": True, "none": None, "t": (KEY, 2), "s": {KEY}}
    out = redact_value(value)
    assert out["n"] == 1
    assert out["f"] == 1.5
    assert out["b"] is True
    assert out["none"] is None
    assert KEY not in repr(out)

"""Values that cannot go on the wire are refused when the config or request is built (issue 14).

An `api_key`, a header or a `correlation_id` that HTTP cannot carry used to pass validation and
fail at the first request: a `UnicodeEncodeError` whose message held `Bearer <key>` in clear
(OC-ADAPT-OAI-6020), a crash of the reader, or a retried POOL_UNAVAILABLE for a header name h11
refuses. Each is now a `ValueError` at construction naming the field — and never the key.
"""

from __future__ import annotations

import traceback

import pytest

from oai_adapter import AdapterConfig, Secret, TaskRequest

BASE = "http://127.0.0.1:9/v1"
KEY = "sk-proj-Zq8Xr4Lm2Np7Vt1Wc5Yb9Hd3Kf6Gs0Ja"


def _every_text_of(exc: BaseException) -> str:
    """Everything an exception can show: str, repr, args and traceback, along its whole
    `__cause__` / `__context__` chain."""
    parts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), *map(repr, e.args)]
        todo += [e.__cause__, e.__context__]
    parts += traceback.format_exception(exc)
    return "\n".join(parts)


@pytest.mark.parametrize(
    "pasted",
    [
        KEY + "\u200b",  # a zero-width space copied with the key
        "\u200b" + KEY,
        KEY[:10] + "\u00a0" + KEY[10:],  # a non-breaking space
        KEY + "é",
        KEY[:5] + "\U0001f511" + KEY[5:],
    ],
)
@pytest.mark.req("OC-ADAPT-OAI-6020")
def test_a_non_ascii_api_key_is_refused_at_construction_without_echoing_it(pasted: str) -> None:
    for build in (
        lambda: AdapterConfig(base_url=BASE, model="m", api_key=pasted),
        lambda: Secret(pasted),
    ):
        with pytest.raises(ValueError, match="api_key: must be ASCII") as info:
            build()
        text = _every_text_of(info.value)
        assert KEY not in text
        assert KEY[:12] not in text
        assert "Bearer" not in text


def test_a_key_with_inner_whitespace_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="whitespace") as info:
        AdapterConfig(base_url=BASE, model="m", api_key=KEY[:10] + " " + KEY[10:])
    assert KEY[:10] not in _every_text_of(info.value)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"x a": "1"}, "'x a' is not a header name"),
        ({"": "1"}, "'' is not a header name"),
        ({"x-ä": "1"}, "is not a header name"),
        ({"x:a": "1"}, "is not a header name"),
        ({"x-a\t": "1"}, "is not a header name"),
        ({"x-a": "é"}, "the value of 'x-a' must be printable ASCII"),
        ({"x-a": "a\u200bb"}, "the value of 'x-a' must be printable ASCII"),
        ({"x-a": "a\x1bb"}, "the value of 'x-a' must be printable ASCII"),
        ({"x-a": "a\x7fb"}, "the value of 'x-a' must be printable ASCII"),
    ],
)
def test_headers_that_cannot_be_sent_are_refused_at_construction(
    headers: dict[str, str], says: str
) -> None:
    with pytest.raises(ValueError, match=r"AdapterConfig\.headers") as info:
        AdapterConfig(base_url=BASE, model="m", headers=headers)
    assert says in str(info.value)


def test_a_refused_header_value_is_not_echoed() -> None:
    value = "private-\u200bvalue"
    with pytest.raises(ValueError, match=r"AdapterConfig\.headers") as info:
        AdapterConfig(base_url=BASE, model="m", headers={"x-team": value})
    assert "private" not in _every_text_of(info.value)


def test_ordinary_headers_still_pass() -> None:
    config = AdapterConfig(
        base_url=BASE, model="m", headers={"X-Team": "a b\tc", "x.trace_id~1": "!#$%&'*+"}
    )
    assert config.headers == {"X-Team": "a b\tc", "x.trace_id~1": "!#$%&'*+"}


@pytest.mark.parametrize("cid", ["é", "run-\u200b1", "a\x1bb", "a\x7f"])
def test_a_correlation_id_that_cannot_be_a_header_is_refused(cid: str) -> None:
    with pytest.raises(ValueError, match=r"TaskRequest\.correlation_id"):
        TaskRequest(task_id="t", prompt="x", correlation_id=cid)


@pytest.mark.parametrize("sid", ["a\x1b[31mb", "a\x00", "a\x7f", "a\x85b", "a\tb"])
def test_a_session_id_with_a_control_character_is_refused(sid: str) -> None:
    with pytest.raises(ValueError, match=r"TaskRequest\.session_id"):
        TaskRequest(task_id="t", prompt="x", session_id=sid)


def test_unicode_session_ids_and_plain_correlation_ids_still_pass() -> None:
    req = TaskRequest(task_id="t", prompt="x", session_id="sessión-☃", correlation_id="run 1/a")
    assert req.session_id == "sessión-☃"
    assert req.correlation_id == "run 1/a"

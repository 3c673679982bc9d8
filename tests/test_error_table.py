"""The error table itself, sans-IO: every status 300–599, the error codes that stand for a
status, and every transport exception httpx2 raises, on each side of the response headers.
The end-to-end rows are in `test_errors.py`; this is the exhaustive sweep of `_errors.py`."""

from __future__ import annotations

import ssl

import httpx2
import pytest

from oai_adapter import ErrorKind, Timeouts, WorkerError
from oai_adapter._errors import (
    RETRYABLE,
    ErrorBody,
    error_from_event,
    error_from_status,
    error_from_transport,
    kind_for_code,
    kind_for_status,
)

from .expected_errors import RETRYABLE_KINDS, expected_kind


@pytest.mark.req("OC-ADAPT-OAI-6030")
def test_every_status_from_300_to_599_has_its_kind_and_retry_rule() -> None:
    for status in range(300, 600):
        error = error_from_status(status, b'{"error": {"message": "m"}}', retry_after_ms=250)
        assert kind_for_status(status) is expected_kind(status), status
        assert error.kind is expected_kind(status), status
        assert error.status == status
        assert error.retryable is (error.kind in RETRYABLE_KINDS)
        assert error.retry_after_ms == 250


def test_only_admission_reject_and_pool_unavailable_are_retryable() -> None:
    assert RETRYABLE == RETRYABLE_KINDS
    for kind in ErrorKind:
        assert WorkerError(kind, "m").retryable is (kind in RETRYABLE_KINDS)


@pytest.mark.parametrize(
    ("codes", "kind"),
    [
        (("rate_limit_error",), ErrorKind.ADMISSION_REJECT),
        (("RATE_LIMIT_EXCEEDED",), ErrorKind.ADMISSION_REJECT),
        (("too_many_requests",), ErrorKind.ADMISSION_REJECT),
        ((429,), ErrorKind.ADMISSION_REJECT),
        (("overloaded",), ErrorKind.POOL_UNAVAILABLE),
        (("overloaded_error",), ErrorKind.POOL_UNAVAILABLE),
        (("unavailable_error",), ErrorKind.POOL_UNAVAILABLE),
        ((503,), ErrorKind.POOL_UNAVAILABLE),
        (("model_not_found",), ErrorKind.UPSTREAM_NOT_FOUND),
        (("invalid_api_key",), ErrorKind.UPSTREAM_AUTH),
        (("context_length_exceeded",), ErrorKind.INVALID_PARAMS),
        ((None, 500), ErrorKind.UPSTREAM_ERROR),
        (("server_error", "rate_limit_exceeded"), ErrorKind.ADMISSION_REJECT),
        (("server_error",), None),
        ((True,), None),  # a bool is not a status
        ((200,), None),
        ((None,), None),
    ],
)
def test_error_codes_that_stand_for_a_status(codes: tuple[object, ...], kind: ErrorKind) -> None:
    assert kind_for_code(*codes) is kind


def test_error_event_first_stands_for_its_status_later_is_upstream_error() -> None:
    body = ErrorBody(message="slow down", type="rate_limit_error", code=429)
    first = error_from_event(body, first=True)
    later = error_from_event(body, first=False)
    assert (first.kind, first.status, first.retryable) == (ErrorKind.ADMISSION_REJECT, 429, True)
    assert (later.kind, later.status, later.retryable) == (ErrorKind.UPSTREAM_ERROR, 429, False)
    assert first.message == later.message == "slow down"
    bare = error_from_event(None, first=True, fallback_message="")
    assert bare.kind is ErrorKind.UPSTREAM_ERROR
    assert bare.message  # says something even when the upstream said nothing


def test_model_not_found_code_wins_over_any_status() -> None:
    body = b'{"error": {"message": "no such model", "code": "model_not_found"}}'
    for status in (400, 404, 500):
        assert error_from_status(status, body).kind is ErrorKind.UPSTREAM_NOT_FOUND


def test_error_bodies_in_every_shape_give_the_upstream_message() -> None:
    shapes = {
        b'{"error": {"message": "a", "type": "t"}}': "a",
        b'{"error": "b"}': "b",
        b'{"detail": "c"}': "c",
        b'{"message": "d"}': "d",
        b'data: {"error": {"message": "e"}}\n\n': "e",
        b"plain text f": "plain text f",
        b"": "HTTP 500",
        b"\xff\xfe not utf-8": "\ufffd\ufffd not utf-8",
    }
    for body, message in shapes.items():
        assert error_from_status(500, body).message == message


def test_long_messages_are_clipped() -> None:
    error = error_from_status(500, b"x" * 10_000)
    assert len(error.message) <= 500


_REQ = httpx2.Request("POST", "http://upstream.test/v1/chat/completions")
TRANSPORT_BEFORE = [
    (httpx2.ConnectTimeout("t", request=_REQ), ErrorKind.POOL_UNAVAILABLE, "connect timeout"),
    (httpx2.ConnectError("refused", request=_REQ), ErrorKind.POOL_UNAVAILABLE, "connect failed"),
    (httpx2.WriteTimeout("t", request=_REQ), ErrorKind.POOL_UNAVAILABLE, "write timeout"),
    (httpx2.WriteError("w", request=_REQ), ErrorKind.POOL_UNAVAILABLE, "connection lost"),
    (httpx2.ReadError("r", request=_REQ), ErrorKind.POOL_UNAVAILABLE, "connection lost"),
    (
        httpx2.RemoteProtocolError("Server disconnected", request=_REQ),
        ErrorKind.POOL_UNAVAILABLE,
        "connection lost",
    ),
    (httpx2.ProxyError("p", request=_REQ), ErrorKind.POOL_UNAVAILABLE, "proxy"),
    (OSError("network unreachable"), ErrorKind.POOL_UNAVAILABLE, "connection lost"),
    (httpx2.UnsupportedProtocol("ftp", request=_REQ), ErrorKind.POLICY, "unsupported URL"),
]


@pytest.mark.parametrize(("exc", "kind", "says"), TRANSPORT_BEFORE)
def test_transport_faults_before_the_headers(exc: Exception, kind: ErrorKind, says: str) -> None:
    error = error_from_transport(exc, after_headers=False, timeouts=Timeouts(connect=2.5))
    assert error.kind is kind
    assert error.retryable is (kind in RETRYABLE_KINDS)
    assert says in error.message
    assert error.status is None


def test_connect_and_write_timeouts_name_their_value() -> None:
    timeouts = Timeouts(connect=2.5, idle=7.0)
    connect = error_from_transport(
        httpx2.ConnectTimeout("t"), after_headers=False, timeouts=timeouts
    )
    write = error_from_transport(httpx2.WriteTimeout("t"), after_headers=False, timeouts=timeouts)
    assert connect.message == "connect timeout: no connection within 2.5 s"
    assert write.message == "write timeout: the request was not sent within 7 s (idle)"


@pytest.mark.parametrize(
    "exc",
    [
        httpx2.ReadError("r", request=_REQ),
        httpx2.RemoteProtocolError("peer closed connection", request=_REQ),
        httpx2.ReadTimeout("t", request=_REQ),
        OSError("reset"),
    ],
)
@pytest.mark.req("OC-ADAPT-OAI-6030")
def test_transport_faults_after_the_headers_are_worker_reset(exc: Exception) -> None:
    error = error_from_transport(exc, after_headers=True)
    assert (error.kind, error.retryable) == (ErrorKind.WORKER_RESET, False)


@pytest.mark.parametrize("after_headers", [False, True])
def test_tls_verification_failure_is_policy_on_either_side(after_headers: bool) -> None:
    cause = ssl.SSLCertVerificationError("certificate verify failed: self-signed certificate")
    exc = httpx2.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]", request=_REQ)
    exc.__cause__ = cause
    error = error_from_transport(exc, after_headers=after_headers)
    assert (error.kind, error.retryable) == (ErrorKind.POLICY, False)
    assert "TLS" in error.message


@pytest.mark.req("OC-ADAPT-OAI-6020")
def test_messages_never_carry_the_api_key() -> None:
    key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    body = f'{{"error": {{"message": "Incorrect API key provided: {key}"}}}}'.encode()
    error = error_from_status(401, body)
    assert key not in error.message
    assert key not in str(error)
    assert key not in error.info().message


def test_worker_errors_pickle_with_every_field() -> None:
    import pickle

    error = WorkerError(
        ErrorKind.ADMISSION_REJECT, "slow down", status=429, retryable=True, retry_after_ms=1500
    )
    back = pickle.loads(pickle.dumps(error))
    assert isinstance(back, WorkerError)
    assert (back.kind, back.message, back.status, back.retryable, back.retry_after_ms) == (
        ErrorKind.ADMISSION_REJECT,
        "slow down",
        429,
        True,
        1500,
    )
    assert str(back) == str(error)

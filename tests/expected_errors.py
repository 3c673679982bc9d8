"""The tests' own copy of DESIGN.md's error table ("Errors"), written out by hand, once.

The library's table (`oai_adapter/_errors.py`) is the code's one source of truth; this is the
independent expectation every test compares it with, so it is never computed from the code
under test. A test that needs "which kind does status N give?" or "is this kind retried?"
imports it from here instead of carrying its own list.
"""

from __future__ import annotations

from oai_adapter import ErrorKind

#: DESIGN.md: only these kinds are retried (and only before `Started`).
RETRYABLE_KINDS = frozenset({ErrorKind.ADMISSION_REJECT, ErrorKind.POOL_UNAVAILABLE})


def expected_kind(status: int) -> ErrorKind:
    """The kind an HTTP status 300–599 maps to, DESIGN.md's rows written out as rules."""
    if 300 <= status < 400:
        return ErrorKind.POLICY  # a redirect is never followed
    if status in (401, 403):
        return ErrorKind.UPSTREAM_AUTH
    if status == 404:
        return ErrorKind.UPSTREAM_NOT_FOUND
    if status == 429:
        return ErrorKind.ADMISSION_REJECT
    if status in (408, 502, 503, 504):
        return ErrorKind.POOL_UNAVAILABLE
    if 400 <= status < 500:
        return ErrorKind.INVALID_PARAMS
    return ErrorKind.UPSTREAM_ERROR


def is_retried(status: int) -> bool:
    return expected_kind(status) in RETRYABLE_KINDS


#: The error statuses the end-to-end tests drive: every status DESIGN.md names and a few it
#: does not (405, 409, 418, 507, 599) that fall to their class's default. The sans-IO sweep in
#: `test_error_table.py` covers every status 300–599.
ERROR_STATUSES = (
    400, 401, 403, 404, 405, 408, 409, 413, 418, 422, 429,
    500, 501, 502, 503, 504, 505, 507, 599,
)  # fmt: skip
#: Redirects: `POLICY`, never followed.
REDIRECTS = (301, 302, 307, 308)
RETRIED_STATUSES = tuple(s for s in ERROR_STATUSES if is_retried(s))
NOT_RETRIED_STATUSES = tuple(s for s in (*ERROR_STATUSES, *REDIRECTS) if not is_retried(s))

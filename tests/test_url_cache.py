"""Request URLs are parsed once per text, in a bounded cache, and still checked every time.

Parsing a URL string costs ≈ 12 µs, twice per request (ours and httpx2's `build_request`,
which takes a parsed `URL` as is): a measurable share of the time to first token.
"""

from __future__ import annotations

import pytest

from oai_adapter import AdapterConfig, WorkerError
from oai_adapter._http import MAX_PARSED_URLS, Upstream, parse_url, parsed_url_count


def test_the_same_url_text_is_parsed_once() -> None:
    first = parse_url("http://127.0.0.1:8080/v1/chat/completions")
    assert parse_url("http://127.0.0.1:8080/v1/chat/completions") is first


def test_the_cache_is_bounded_and_still_caches_when_it_was_full() -> None:
    for i in range(MAX_PARSED_URLS + 10):
        parse_url(f"http://127.0.0.1:{1000 + i}/v1/chat/completions")
        assert parsed_url_count() <= MAX_PARSED_URLS
    late = parse_url("http://127.0.0.1:9999/v1/chat/completions")
    assert parse_url("http://127.0.0.1:9999/v1/chat/completions") is late


def test_a_cached_url_is_still_checked_against_allowed_hosts() -> None:
    upstream = Upstream(AdapterConfig(base_url="http://127.0.0.1:8080/v1", model="m"))
    url = "http://evil.example:8080/v1/chat/completions"
    parse_url(url)  # cached before the request
    with pytest.raises(WorkerError, match="allowed_hosts"):
        upstream.build_request("POST", url)
    with pytest.raises(WorkerError, match="allowed_hosts"):
        upstream.build_request("POST", url)

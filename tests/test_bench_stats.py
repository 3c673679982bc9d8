"""`bench` figures: percentiles and the serving benchmarks' definitions (sans-IO)."""

from __future__ import annotations

import pytest

from oai_adapter._cli._stats import RequestSample, percentile, summarize


def test_percentile_interpolates_linearly_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_an_empty_sample_and_a_bad_q() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_summarize_follows_the_serving_benchmark_definitions() -> None:
    # start 0; tokens at 0.1, 0.15, 0.3; end 0.4 → TTFT 100, ITL 50 and 150,
    # TPOT (400 − 100) / (3 − 1) = 150, E2EL 400 (ms).
    ok = RequestSample(start=0.0, token_times=[0.1, 0.15, 0.3], end=0.4, ok=True)
    one = RequestSample(start=1.0, token_times=[1.2], end=1.25, ok=True)  # n = 1: no TPOT
    failed = RequestSample(start=0.0, token_times=[], end=0.05, ok=False, error="UPSTREAM_ERROR")
    report = summarize([ok, one, failed], wall_s=2.0)
    assert (report.requests, report.succeeded, report.failed) == (3, 2, 1)
    assert report.tokens_out == 4
    assert report.tokens_per_s == 2.0
    assert report.requests_per_s == 1.0
    assert report.ttft_ms.count == 2
    assert report.ttft_ms.mean == pytest.approx(150.0)  # 100 and 200
    assert report.itl_ms.count == 2
    assert report.itl_ms.percentiles["p50"] == pytest.approx(100.0)  # 50 and 150
    assert report.tpot_ms.count == 1
    assert report.tpot_ms.mean == pytest.approx(150.0)
    assert report.e2el_ms.count == 2
    assert report.e2el_ms.percentiles["p50"] == pytest.approx(325.0)  # 400 and 250
    assert report.errors == {"UPSTREAM_ERROR": 1}


def test_summarize_with_no_success_has_empty_distributions() -> None:
    report = summarize([RequestSample(0.0, [], 0.1, ok=False, error="X")], wall_s=0.1)
    assert report.ttft_ms.as_dict() == {
        "count": 0,
        "mean": None,
        "p50": None,
        "p90": None,
        "p99": None,
    }
    assert report.tokens_out == 0

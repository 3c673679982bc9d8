"""HostPolicy (HOST.md, "HostPolicy"): immutable, validated, `ValueError` naming the field."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oai_adapter import HostPolicy, RetryPolicy


def test_defaults_are_the_contracts() -> None:
    assert HostPolicy() == HostPolicy(
        max_failovers=2,
        breaker_failures=5,
        breaker_open=10.0,
        breaker_open_max=300.0,
        max_ejected=0.5,
        budget_percent=20.0,
        budget_window=10.0,
        budget_min_per_s=10.0,
        probe_interval=5.0,
        drain_timeout=30.0,
    )


def test_budget_numbers_match_retry_policy_defaults() -> None:
    host, lone = HostPolicy(), RetryPolicy()
    for name in ("budget_percent", "budget_window", "budget_min_per_s"):
        assert getattr(host, name) == getattr(lone, name)


def test_policy_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        HostPolicy().max_failovers = 3  # type: ignore[misc]


BAD = [
    ("max_failovers", -1),
    ("max_failovers", 1.5),
    ("max_failovers", True),
    ("breaker_failures", 0),
    ("breaker_failures", 2.0),
    ("breaker_open", 0.0),
    ("breaker_open", math.inf),
    ("breaker_open", math.nan),
    ("probe_interval", 0),
    ("probe_interval", -1.0),
    ("probe_interval", math.inf),
    ("breaker_open_max", 5.0),  # < breaker_open (10)
    ("breaker_open_max", math.inf),
    ("drain_timeout", -0.1),
    ("drain_timeout", math.inf),
    ("max_ejected", -0.01),
    ("max_ejected", 1.01),
    ("max_ejected", math.nan),
    ("budget_percent", -1.0),
    ("budget_percent", math.inf),
    ("budget_min_per_s", -1.0),
    ("budget_min_per_s", math.nan),
    ("budget_window", 0.0),
    ("budget_window", math.inf),
    ("budget_window", "10"),
]


@pytest.mark.parametrize(("field", "value"), BAD)
def test_invalid_value_raises_value_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"HostPolicy\.{field}"):
        HostPolicy(**{field: value})  # type: ignore[arg-type]


GOOD = [
    ("max_failovers", 0),
    ("breaker_failures", 1),
    ("drain_timeout", 0.0),
    ("max_ejected", 0.0),
    ("max_ejected", 1.0),
    ("budget_percent", 0.0),
    ("budget_min_per_s", 0.0),
    ("breaker_open_max", 10.0),  # == breaker_open
]


@pytest.mark.parametrize(("field", "value"), GOOD)
def test_boundary_values_are_valid(field: str, value: object) -> None:
    assert getattr(HostPolicy(**{field: value}), field) == value  # type: ignore[arg-type]


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)


@given(
    open_s=finite,
    open_max=finite,
    ejected=finite,
    percent=finite,
    window=finite,
    drain=finite,
)
def test_validation_accepts_exactly_the_documented_ranges(
    open_s: float, open_max: float, ejected: float, percent: float, window: float, drain: float
) -> None:
    valid = (
        open_s > 0
        and open_max > 0
        and open_max >= open_s
        and 0 <= ejected <= 1
        and percent >= 0
        and window > 0
        and drain >= 0
    )
    kwargs = dict(
        breaker_open=open_s,
        breaker_open_max=open_max,
        max_ejected=ejected,
        budget_percent=percent,
        budget_window=window,
        drain_timeout=drain,
    )
    if valid:
        HostPolicy(**kwargs)  # type: ignore[arg-type]
    else:
        with pytest.raises(ValueError, match=r"HostPolicy\."):
            HostPolicy(**kwargs)  # type: ignore[arg-type]

"""The replica breaker, sans-IO (HOST.md, "Circuit breaker"): closed → open → half-open with one
trial → closed; open period doubling to the cap; reset on success; `may_open` respected."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oai_adapter._breaker import Breaker


def test_opens_after_consecutive_failures_only_when_allowed() -> None:
    b = Breaker(3, 10.0, 300.0)
    assert b.failed(0.0, 0, may_open=True) is None
    assert b.failed(0.0, 0, may_open=True) is None
    assert b.failed(1.0, 0, may_open=False) is None  # the pool may not eject it
    assert b.state == "closed"
    assert b.consecutive_failures == 3
    assert b.failed(2.0, 0, may_open=True) == "open"
    assert b.open_until == 12.0
    assert not b.admits(5.0)


def test_success_in_between_resets_the_count() -> None:
    b = Breaker(2, 10.0, 300.0)
    b.failed(0.0, 0, may_open=True)
    b.succeeded(False)
    assert b.failed(0.0, 0, may_open=True) is None
    assert b.state == "closed"


def test_half_open_admits_one_trial_and_its_success_closes() -> None:
    b = Breaker(1, 10.0, 300.0)
    b.failed(0.0, 0, may_open=True)
    assert b.poll(9.99) is None
    assert b.poll(10.0) == "half_open"
    assert b.open_until is None
    assert b.admits(10.0)
    trial = b.take()
    assert trial
    assert not b.admits(10.0)  # one trial at a time
    with pytest.raises(RuntimeError):
        b.take()
    assert b.succeeded(trial) == "closed"
    assert b.admits(10.0)
    assert b.take() == 0


def test_period_doubles_on_each_reopening_up_to_the_cap_and_resets_on_success() -> None:
    b = Breaker(1, 10.0, 35.0)
    now = 0.0
    periods = []
    for _ in range(4):
        assert b.failed(now, b.take(), may_open=True) == "open"
        assert b.open_until is not None
        periods.append(b.open_until - now)
        now = b.open_until
        assert b.poll(now) == "half_open"
    assert periods == [10.0, 20.0, 35.0, 35.0]
    b.succeeded(b.take())
    assert b.failed(now, 0, may_open=True) == "open"
    assert b.open_until == now + 10.0


def test_trial_that_ends_as_neither_frees_the_permit_and_stays_half_open() -> None:
    b = Breaker(1, 1.0, 1.0)
    b.failed(0.0, 0, may_open=True)
    b.poll(1.0)
    b.neither(b.take())
    assert b.state == "half_open"
    assert b.admits(1.0)


def test_half_open_trial_failure_that_may_not_reopen_closes() -> None:
    b = Breaker(1, 1.0, 1.0)
    b.failed(0.0, 0, may_open=True)
    b.poll(1.0)
    trial = b.take()
    assert b.failed(1.0, trial, may_open=False) == "closed"
    assert b.admits(1.0)


ops = st.lists(
    st.tuples(
        st.sampled_from(["fail", "succeed", "neither", "place", "wait"]),
        st.booleans(),
        st.floats(min_value=0.0, max_value=50.0),
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(ops=ops, threshold=st.integers(1, 4))
def test_breaker_invariants_hold_for_any_sequence(
    ops: list[tuple[str, bool, float]], threshold: int
) -> None:
    open_s, open_max = 2.0, 20.0
    b = Breaker(threshold, open_s, open_max)
    now = 0.0
    trials_out: list[int] = []  # placed tasks: each one's trial permit (0: none)
    last_period: float | None = None
    for op, may_open, dt in ops:
        b.poll(now)
        before = b.state
        if op == "wait":
            now += dt
        elif op == "place":
            if b.admits(now):
                trials_out.append(b.take())
            continue
        elif trials_out:
            trial = trials_out.pop(0)
            if op == "fail":
                state = b.failed(now, trial, may_open=may_open)
                if state == "open":
                    assert may_open  # never opens unless the pool allows it
                    assert b.open_until is not None
                    period = b.open_until - now
                    assert open_s - 1e-9 <= period <= open_max + 1e-9
                    if last_period is None:
                        assert period == pytest.approx(open_s)  # the first since a success
                    else:
                        assert period == pytest.approx(min(2 * last_period, open_max))  # doubling
                    last_period = period
            elif op == "succeed":
                b.succeeded(trial)
                assert b.state == "closed"
                assert b.consecutive_failures == 0
                last_period = None
            else:
                b.neither(trial)
        assert (b.open_until is not None) == (b.state == "open")
        if b.trial_out:  # the permit is held by exactly one running task
            assert trials_out.count(b._trial) == 1
        assert before != "open" or b.state != "closed" or op == "succeed"

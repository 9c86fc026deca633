"""The request pacer: a rate limit, Retry-After holds and AIMD on 429s, on a fake clock."""

from __future__ import annotations

import pytest

from rungwise.backends.pacing import RECOVERY_SUCCESSES, RequestPacer


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_rate_limit_spaces_starts_evenly_even_in_a_burst() -> None:
    clock = Clock()
    p = RequestPacer(rate_limit=4.0, clock=clock)
    assert [p.reserve() for _ in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    clock.t += 10  # idle time is not saved up: the next burst is spaced again
    assert [p.reserve() for _ in range(2)] == [0.0, 0.25]


def test_no_limit_means_no_wait_until_a_429() -> None:
    p = RequestPacer(clock=Clock())
    assert {p.reserve() for _ in range(100)} == {0.0} and p.rate is None


def test_retry_after_holds_every_start() -> None:
    clock = Clock()
    p = RequestPacer(clock=clock)
    booked = p.now()
    p.reserve()
    p.throttled(booked, retry_after_s=3.0)
    assert p.reserve() >= 3.0  # another request, not the one that got the 429
    clock.t += 3.5
    assert p.reserve() < 1.0


def test_a_429_halves_the_achieved_rate_once_per_burst_and_successes_win_it_back() -> None:
    clock = Clock()
    p = RequestPacer(clock=clock)
    booked = []
    for _ in range(20):  # 20 requests/s for a second, unpaced
        booked.append(p.now())
        p.reserve()
        clock.t += 0.05
    assert p.throttled(booked[-1], None)
    assert p.rate == pytest.approx(0.5 * 20 / 1.0, rel=0.1)  # half the 20/s achieved
    cut = p.rate
    # 429s for the other requests booked before the cut are the same signal: no second cut.
    assert not any(p.throttled(b, None) for b in booked)
    assert p.cuts == 1
    # Additive increase: RECOVERY_SUCCESSES answers bring it back to where the 429s began.
    for _ in range(RECOVERY_SUCCESSES):
        p.succeeded()
    assert p.rate == pytest.approx(2 * cut)
    # A request booked after the cut that is throttled again cuts again.
    clock.t += 1
    late = p.now()
    p.reserve()
    clock.t += 0.1
    assert p.throttled(late, None) and p.cuts == 2 and p.rate < 2 * cut


def test_the_adaptive_rate_never_exceeds_the_configured_limit() -> None:
    clock = Clock()
    p = RequestPacer(rate_limit=8.0, clock=clock)
    booked = p.now()
    for _ in range(8):
        p.reserve()
    clock.t += 1.0
    assert p.throttled(booked, None) and p.rate is not None and p.rate < 8.0
    for _ in range(10 * RECOVERY_SUCCESSES):
        p.succeeded()
    assert p.rate == 8.0


def test_a_cut_delays_the_next_start_by_one_new_interval() -> None:
    clock = Clock()
    p = RequestPacer(clock=clock)
    booked = p.now()
    for _ in range(4):
        p.reserve()
    clock.t += 1.0
    p.throttled(booked, None)
    assert p.reserve() == pytest.approx(1 / p.rate)


def test_invalid_limit() -> None:
    with pytest.raises(ValueError):
        RequestPacer(rate_limit=0)

"""Backoff with full jitter, the refusal wait, the catch-up rate and Retry-After."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from agent.errors import ForwardError
from agent.forward.client import parse_retry_after
from agent.forward.pacing import REFUSED_BACKOFF_CAP, Pacing, RateLimit, full_jitter


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 10, 100, 10_000])
def test_full_jitter_stays_within_zero_and_the_capped_exponential(attempt: int) -> None:
    rng = random.Random(attempt)
    bound = min(30.0, 0.5 * 2.0 ** min(attempt, 64))
    draws = [full_jitter(attempt, 0.5, 30.0, rng) for _ in range(2000)]
    assert all(0.0 <= d <= bound for d in draws)
    # full jitter: spread over the whole range, not clustered at the bound
    assert min(draws) < bound * 0.05 and max(draws) > bound * 0.95
    assert abs(sum(draws) / len(draws) - bound / 2) < bound * 0.05


def test_refusals_wait_long_and_longer_up_to_an_hour() -> None:
    pacing = Pacing(refused_backoff=300.0)
    assert [pacing.refused(n) for n in (1, 2, 3, 4, 5)] == [300, 600, 1200, 2400, 3600]
    assert pacing.refused(1000) == REFUSED_BACKOFF_CAP


@pytest.mark.parametrize(
    "options",
    [{"rate": -1}, {"rate": 1.5}, {"stop_wait": -1.0}, {"backoff_base": 0}, {"backoff_cap": 0.1}],
)
def test_pacing_refuses_nonsense(options: dict[str, object]) -> None:
    with pytest.raises(ForwardError):
        Pacing(**options)  # type: ignore[arg-type]


def test_rate_limit_averages_the_rate_with_one_second_of_burst() -> None:
    now = [0.0]
    limit = RateLimit(1000, lambda: now[0])
    sent = 0
    while now[0] < 10.0:
        wait = limit.delay()
        if wait:
            now[0] += wait
            continue
        limit.spend(300)  # batches larger than a tenth of the rate still go
        sent += 300
    assert 1000 * 10 <= sent <= 1000 * 11 + 300
    assert RateLimit(0, lambda: 0.0).delay() == 0.0  # 0: unlimited


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(10.0, usegmt=True), now=1_000_000.0) == 0.0

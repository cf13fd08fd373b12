"""How fast the forwarder sends and how long it waits after a failure.

``full_jitter`` spreads the retries of many hosts after a collector outage instead of letting
them arrive together; ``RateLimit`` bounds catch-up, so a collector back from an outage is not
knocked over again by every host's backlog at once; a refused batch waits long
(``Pacing.refused``), since the same bytes are refused the same way until someone acts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import ForwardError

#: Catch-up rate in records/s: a 1 M-record backlog in 5 s, if the collector keeps up.
DEFAULT_RATE = 200_000
DEFAULT_STOP_WAIT = 5.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
REFUSED_BACKOFF = 300.0
#: When caught up, the least time between two batches: each batch costs 1.5-2 ms of the
#: forwarder's CPU whatever its size (HTTP, JSON, the receipt's signature check, waking up
#: for the answer), so a busy host sends two large batches a second instead of one per seal
#: (10 a second). Latency: half a second more at most (bench/forward.py, bench/forward_agent.py:
#: the p99 from a record to its receipt stays under the 1 s forwarding may take at 10 k/s).
BATCH_INTERVAL = 0.5
REFUSED_BACKOFF_CAP = 3600.0
#: The longest Retry-After honoured; a longer one is taken as this.
RETRY_AFTER_CAP = 3600.0


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """A wait drawn uniformly from [0, min(cap, base * 2**attempt)] ("full jitter")."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 64)))


@dataclass(frozen=True)
class Pacing:
    """``rate``: records/s (0: unlimited); ``stop_wait``: how long a clean stop forwards;
    backoff after a network error or a 5xx from ``backoff_base`` doubling to ``backoff_cap``
    (full jitter); after a refusal ``refused_backoff``, doubling to an hour; when caught up, a
    batch at most every ``batch_interval`` seconds."""

    rate: int = DEFAULT_RATE
    stop_wait: float = DEFAULT_STOP_WAIT
    backoff_base: float = BACKOFF_BASE
    backoff_cap: float = BACKOFF_CAP
    refused_backoff: float = REFUSED_BACKOFF
    batch_interval: float = BATCH_INTERVAL

    def __post_init__(self) -> None:
        if type(self.rate) is not int or self.rate < 0:
            raise ForwardError(f"--forward-rate must be records/s (0: unlimited), not {self.rate}")
        if not self.stop_wait >= 0:
            raise ForwardError(f"--forward-wait must be 0 or more seconds, not {self.stop_wait}")
        if not 0 < self.backoff_base <= self.backoff_cap:
            raise ForwardError("the backoff base must be positive and at most the cap")
        if not self.refused_backoff > 0:
            raise ForwardError("the backoff after a refusal must be positive")
        if not self.batch_interval >= 0:
            raise ForwardError("the batch interval must be 0 or more seconds")

    def retry(self, attempt: int, rng: random.Random) -> float:
        return full_jitter(attempt, self.backoff_base, self.backoff_cap, rng)

    def refused(self, times: int) -> float:
        """The wait after the ``times``-th refusal in a row (from 1)."""
        cap = max(REFUSED_BACKOFF_CAP, self.refused_backoff)
        return min(cap, self.refused_backoff * 2.0 ** min(times - 1, 16))


class RateLimit:
    """``rate`` records/s on average, one second of burst. A batch is sent when the bucket is
    not in debt and paid for afterwards, so a batch larger than the bucket still goes."""

    def __init__(self, rate: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate)
        self._at = clock()

    def delay(self) -> float:
        """Seconds until the next batch may go."""
        if not self.rate:
            return 0.0
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        # a debt of less than a record is none (and float rounding leaves such debts)
        return 0.0 if self._tokens > -1 else -self._tokens / self.rate

    def spend(self, records: int) -> None:
        self._tokens -= records

"""Token buckets of ``mxc sim-server``'s rate limits (requests per second, tokens per minute).

A bucket holds up to ``capacity`` units and refills at ``rate`` units per second. A request of ``cost``
units is admitted when the bucket holds ``min(cost, capacity)`` (so a request larger than the whole
bucket still passes once it is full) and then takes ``cost``, which may leave the bucket in debt: the
next request waits until the debt is paid. A refused request takes nothing (the limit counts served
work), and learns how long until it would be admitted: its ``Retry-After``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


class TokenBucket:
    """``rate`` units per second, at most ``capacity`` saved up; starts full."""

    __slots__ = ("rate", "capacity", "level", "stamp", "clock")

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate, self.capacity, self.clock = rate, capacity, clock
        self.level = capacity
        self.stamp = clock()

    def wait(self, cost: float) -> float:
        """Seconds until a request of ``cost`` would be admitted (0: now)."""
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, cost: float) -> None:
        """Admit a request of ``cost`` (after ``wait`` said 0)."""
        self.level -= cost


def admit(buckets: Sequence[tuple[TokenBucket, float]]) -> float:
    """Take every (bucket, cost) at once when all admit, returning 0; else take none and return the
    longest wait."""
    wait = max((b.wait(c) for b, c in buckets), default=0.0)
    if wait == 0.0:
        for b, c in buckets:
            b.take(c)
    return wait
